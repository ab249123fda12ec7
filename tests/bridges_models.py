"""The tests' tiny random models in the published layouts: the builders of
`bridges.demo_models` (one builder for the demo and the tests)."""

from bridges.demo_models import (  # noqa: F401
    MAX_LENGTH,
    PROMPT_WORDS,
    WIDTH,
    arc2face,
    base_model,
    detector,
    recognizer,
    save_encoder_like_transformers_4,
    text_encoder_config,
    tokenizer_files,
)
