from .precision import AutocastConv2d
from .spam import SPECTRAL_IMPLS, SpectralPoolingMixer
from .spectral_pooling import (SPECTRAL_LAMBDAS, spectral_basis, spectral_filter,
                               spectral_pool_fft)

__all__ = [
    'AutocastConv2d', 'SPECTRAL_IMPLS', 'SPECTRAL_LAMBDAS', 'SpectralPoolingMixer',
    'spectral_basis', 'spectral_filter', 'spectral_pool_fft'
]
