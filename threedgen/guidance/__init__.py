"""Guidance methods: name -> class. Each class has a nested ``Config`` dataclass; each file holds
one method with its gradient in the docstring. A new method: one file, one entry here, one recipe."""

from threedgen.guidance.asd import ASD
from threedgen.guidance.csds import CSDS
from threedgen.guidance.esd import ESD
from threedgen.guidance.ism import ISM
from threedgen.guidance.sds import SDS
from threedgen.guidance.tsm import TSM
from threedgen.guidance.vsd import VSD

GUIDANCE = {"sds": SDS, "vsd": VSD, "esd": ESD, "ism": ISM, "tsm": TSM, "asd": ASD, "csds": CSDS}
