"""DETR-family detectors in plain PyTorch + torchvision, with every intermediate a distiller
needs (see output.py); configs in config.py, `build_model` in build.py."""
