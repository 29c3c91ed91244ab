"""Analysis of a run's artifacts, shared by the report stage and the user tools (compare, thoughts, inspect).

- :mod:`~lori.analysis.stats`: Wilson intervals, exact McNemar tests, per-problem agreement;
- :mod:`~lori.analysis.tables`: the report's tables as ``(header, rows)``;
- :mod:`~lori.analysis.published`: other papers' numbers, with sources;
- :mod:`~lori.analysis.figures`: every figure (matplotlib, imported on first use);
- :mod:`~lori.analysis.render`: Markdown / self-contained HTML pages;
- :mod:`~lori.analysis.runs`: finding a run and reading its artifacts;
- :mod:`~lori.analysis.provenance`: where a run's numbers come from (commit, config hash, versions, machine);
- :mod:`~lori.analysis.logit_lens`: decoding latent thoughts;
- :mod:`~lori.analysis.student`: answering questions with a checkpoint (``lori.load_student``, ``lori answer``).

``logit_lens``, ``step_probe`` and ``student`` import torch; the others do not.

No module here imports a stage.
"""
