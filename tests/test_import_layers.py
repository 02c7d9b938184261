"""Dependencies run one way: the lower layers import nothing above them (issue 19)."""
import subprocess
import sys

import pytest

ABOVE_THE_MODEL = ("spanbert_fast.tasks", "spanbert_fast.train", "spanbert_fast.commands", "spanbert_fast.cli")


def modules_after_import(statement: str):
    code = f"import sys; {statement}; print('\\n'.join(m for m in sys.modules if m.startswith('spanbert_fast')))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(out.split())


@pytest.mark.parametrize("statement", [
    "import spanbert_fast.ops",
    "import spanbert_fast.model",
    "from spanbert_fast import SpanBertForPreTraining",
])
def test_ops_and_model_import_no_task_training_or_cli_module(statement):
    loaded = modules_after_import(statement)
    assert not [m for m in loaded if m.startswith(ABOVE_THE_MODEL)], sorted(loaded)


def test_hub_and_io_import_no_model():
    loaded = modules_after_import("import spanbert_fast.hub, spanbert_fast.io")
    assert not loaded & {"spanbert_fast.model", "spanbert_fast.pretrained", "spanbert_fast.ops"}, sorted(loaded)


def test_public_names_stay_importable():
    import spanbert_fast

    for name in spanbert_fast.__all__:
        assert getattr(spanbert_fast, name) is not None, name
    with pytest.raises(AttributeError):
        spanbert_fast.NoSuchThing  # noqa: B018
