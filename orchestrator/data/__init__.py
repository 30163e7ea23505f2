"""Data: prompt sets, demonstrations and rankings, read through `datasets`, converted from public
formats, curated, checked against the row schemas (schema.py); a bad row is a DataError naming
it."""

from instructray.orchestrator.data.converters import RANKING_FORMATS, convert_rankings
from instructray.orchestrator.data.curation import CurationReport, curate, split_by_user
from instructray.orchestrator.data.examples import (
    Demonstration,
    ExampleSet,
    Ranking,
    curation_settings,
    load_demonstrations,
    load_prompt_set,
    load_rankings,
)
from instructray.orchestrator.data.pretrain import TINY_PRETRAIN, load_pretrain, tokenize_text
from instructray.orchestrator.data.prompts import (
    PromptSampler,
    PromptSet,
    format_prompt,
    load_prompts,
    row_problem,
    tokenize_prompt,
)
from instructray.orchestrator.data.schema import DataError, prompt_text
from instructray.orchestrator.data.sources import TINY_DATA, TINY_PROMPTS, load_rows, tiny_prompts

__all__ = [
    "RANKING_FORMATS",
    "TINY_DATA",
    "TINY_PRETRAIN",
    "TINY_PROMPTS",
    "CurationReport",
    "DataError",
    "Demonstration",
    "ExampleSet",
    "PromptSampler",
    "PromptSet",
    "Ranking",
    "convert_rankings",
    "curate",
    "curation_settings",
    "format_prompt",
    "load_demonstrations",
    "load_prompt_set",
    "load_pretrain",
    "load_prompts",
    "load_rankings",
    "load_rows",
    "prompt_text",
    "row_problem",
    "split_by_user",
    "tiny_prompts",
    "tokenize_prompt",
    "tokenize_text",
]
