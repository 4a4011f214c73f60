# Copyright (c) spanet_mm contributors. All rights reserved.
from .hooks import RNGStateHook

__all__ = ['RNGStateHook']
