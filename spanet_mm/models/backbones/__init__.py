from .spanet import SPANet, SPANetBlock

__all__ = ['SPANet', 'SPANetBlock']
