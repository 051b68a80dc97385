import pytest

from rec_pipeline.data.aliccp import parser as aliccp_parser


@pytest.fixture(scope="module", params=aliccp_parser.TOKENIZERS)
def each_tokenizer(request):
    """Runs a module's tests once per tokenizer (FileParser's default while they run)."""
    previous = aliccp_parser.DEFAULT_TOKENIZER
    aliccp_parser.DEFAULT_TOKENIZER = request.param
    yield request.param
    aliccp_parser.DEFAULT_TOKENIZER = previous
