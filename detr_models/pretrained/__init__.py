"""Pretrained checkpoints users already hold (Hugging Face folders, official repos' `.pth`),
turned into this product's models: their configs, their weight names, their class names."""
