"""No silent keys: a key that nothing reads stops the run in one line (cli/known_keys.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from conftest import compose_config
from omegaconf import OmegaConf

from lightfit.cli.known_keys import check_keys
from lightfit.errors import LightfitError


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+loop.l1=1e-4", "unknown key loop.l1: loop takes no 'l1' "
                          "(valid: name, accumulate_grad_batches, gradient_clip_val, module, fit)"),
        ("+loop.gradient_clip=1", "unknown key loop.gradient_clip: loop takes no 'gradient_clip' "
                                  "(did you mean loop.gradient_clip_val?)"),
        ("+model.hiden=[8]", "unknown key model.hiden: lightfit.nets.MLP takes no 'hiden' "
                             "(did you mean model.hidden?)"),
        ("+trainer.max_epoch=3", "unknown key trainer.max_epoch: trainer takes no 'max_epoch' "
                                 "(did you mean trainer.max_epochs?)"),
        ("+optimizer.lr_decay=1", "unknown key optimizer.lr_decay: torch.optim.adam.Adam takes no "
                                  "'lr_decay'"),
        ("+task.averge=binary", "unknown key task.averge: task takes no 'averge' "
                                "(did you mean task.average?)"),
        ("+seeed=1", "unknown key seeed: the config takes no 'seeed' (did you mean seed?)"),
    ],
)  # fmt: skip
def test_a_key_added_with_plus_to_a_schema_is_refused(override, message):
    cfg = compose_config(override)  # Hydra accepts it ...
    with pytest.raises(LightfitError) as raised:
        check_keys(cfg)  # ... this does not
    assert str(raised.value).startswith(message)


def test_every_shipped_option_passes():
    for overrides in ([], ["data=diabetes", "model=cnn"], ["experiment=digits_cnn", "scheduler=cosine"],
                      ["logger=[csv,tensorboard]"], ["task.metrics=[acc,f1]", "debug=fast"]):  # fmt: skip
        check_keys(compose_config(*overrides))


def test_a_target_of_ones_own_is_checked_against_its_signature():
    def cfg(node):
        return OmegaConf.create({"task": {"loss": node}})

    loss = {"_target_": "torch.nn.CrossEntropyLoss", "label_smothing": 0.1}
    with pytest.raises(LightfitError) as raised:
        check_keys(cfg(loss))
    assert str(raised.value) == (
        "unknown key task.loss.label_smothing: torch.nn.CrossEntropyLoss takes no 'label_smothing' "
        "(did you mean task.loss.label_smoothing?)"
    )
    # Hydra's own keys, **kwargs, and lightfit's `name` of a metric entry pass.
    check_keys(cfg({"_target_": "torch.nn.CrossEntropyLoss", "_partial_": True, "_convert_": "all",
                    "label_smoothing": 0.1}))  # fmt: skip
    check_keys(cfg({"_target_": "builtins.dict", "anything": 1}))
    metric = {"_target_": "torchmetrics.classification.MulticlassAccuracy", "name": "a", "top_k": 2}
    check_keys(OmegaConf.create({"task": {"metrics": [metric]}}))
    with pytest.raises(LightfitError, match=r"^task.loss._target_=nowhere.Loss cannot be "):
        check_keys(cfg({"_target_": "nowhere.Loss"}))
    with pytest.raises(LightfitError, match=r"has no attribute 'CrossEntropy'"):
        check_keys(cfg({"_target_": "torch.nn.CrossEntropy"}))


def test_a_users_network_in_a_config_dir_is_checked_before_lightning_is_imported(tmp_path):
    (tmp_path / "mynets.py").write_text(
        textwrap.dedent("""
        import torch

        def Wide(input_shape, num_outputs, width: int = 64, depth: int = 2):
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_outputs))
        """)
    )
    (tmp_path / "conf" / "model").mkdir(parents=True)
    wide = tmp_path / "conf" / "model" / "wide.yaml"
    wide.write_text("_target_: mynets.Wide\n_partial_: true\nwidht: 8\n")
    code = (
        "import sys\n"
        "from lightfit.cli.train import main\n"
        f"sys.argv = ['lightfit-train', '--config-dir={tmp_path / 'conf'}', 'model=wide']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exit:\n"
        "    print(exit.code, 'lightning' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.stdout.split() == ["2", "False"], proc.stderr
    assert proc.stderr.strip() == (
        "lightfit-train: error: unknown key model.widht: mynets.Wide takes no 'widht' "
        "(did you mean model.width?)"
    )
