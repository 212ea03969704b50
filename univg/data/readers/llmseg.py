"""LLMSeg-Grounding: read by the same body as LISA-Grounding (:mod:`univg.data.readers.lisa`)."""

from univg.data.readers.lisa import LLMSEG, read_llmseg

__all__ = ["LLMSEG", "read_llmseg"]
