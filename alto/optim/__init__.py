"""Optimizer classes: ALTO, Lamb and the E adaptor (torch only)."""

from alto.optim.alto import ALTO
from alto.optim.e import E
from alto.optim.lamb import Lamb

__all__ = ["ALTO", "E", "Lamb"]
