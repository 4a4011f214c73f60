from .backbones import SPANet

__all__ = ['SPANet']
