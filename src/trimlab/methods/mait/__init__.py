"""MaiT (Li, Shafiee Ardestani, Hassoun 2022): locality masks on chosen attention heads of a ViT or CaiT-style model."""
