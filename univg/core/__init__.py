"""The base layer every other part of univg may import (and that imports none of them).

- :mod:`~univg.core.boxes`: boxes, coordinate frames and answer parsing;
- :mod:`~univg.core.sample_types`: :class:`~univg.core.sample_types.GroundingSample`, the sample
  every layer shares, and its error;
- :mod:`~univg.core.prompts`: prompt templates, chat messages and assistant targets;
- :mod:`~univg.core.errors`: expected failures and the one line each entry point turns them into;
- :mod:`~univg.core.console`: a console without Lightning's advertisements.
"""
