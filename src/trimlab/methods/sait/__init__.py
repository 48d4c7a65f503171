"""SaiT (Li, Thorsley, Hassoun 2022): one ViT checkpoint for every token density, pruned adaptively by class attention."""
