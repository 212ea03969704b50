"""Cold-start CoT data construction (UniVG-R1 section 3.1) with any OpenAI-compatible teacher.

A teacher model writes ``chains`` reasoning chains per sample given the question, the images and
the ground-truth box; automatic checks drop malformed, wrong-box, shallow or answer-leaking chains;
the judge (same endpoint by default) picks the best survivor; a sample of the result is exported
for human review. CLI: ``python -m univg.cot build|import-review`` (see :mod:`univg.cot.__main__`).
"""

from univg.cot.builder import BuildConfig, CotBuilder, pick_review, write_output
from univg.cot.cache import ResponseCache, cache_key
from univg.cot.checks import ChainCheck, check_chain
from univg.cot.client import ChatClient, ChatResult, TeacherRequestError
from univg.cot.report import BuildReport
from univg.cot.results import SampleResult
from univg.cot.review import apply_review, export_review

__all__ = [
    "BuildConfig",
    "BuildReport",
    "ChainCheck",
    "ChatClient",
    "ChatResult",
    "CotBuilder",
    "ResponseCache",
    "SampleResult",
    "TeacherRequestError",
    "apply_review",
    "cache_key",
    "check_chain",
    "export_review",
    "pick_review",
    "write_output",
]
