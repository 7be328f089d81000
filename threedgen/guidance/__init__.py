"""Guidance methods: name -> class. Each class has a nested ``Config`` dataclass."""

from threedgen.guidance.sds import SDS

GUIDANCE = {"sds": SDS}
