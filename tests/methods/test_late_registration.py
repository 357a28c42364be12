"""A method registered after ``contrastseg.config`` was imported can be chosen by name.

Runs in a fresh interpreter: the registration would otherwise stay in this process's
registries for the rest of the suite.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import warnings

    from contrastseg.config import load_pretrain_config  # imported before the registration
    from contrastseg.methods import available_methods, register_method
    from contrastseg.methods.base import Method, MethodConfig
    from contrastseg.train.finetune_config import load_finetune_config
    from contrastseg.utils.sections import section

    @section("method")
    class MineConfig(MethodConfig):
        alpha: float = 1.0

    @register_method
    class Mine(Method):
        name = "mine"
        config_class = MineConfig

    assert "mine" in available_methods()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the quickstart's GLCNet keys are not Mine's
        config = load_pretrain_config(None, ["method.name=mine", "method.alpha=2"])
    assert type(config.method) is MineConfig and config.method.alpha == 2.0
    try:
        load_pretrain_config(None, ["method.name=mine", "method.alpha=[1]"])
    except ValueError as err:
        assert "method.alpha" in str(err), err
    else:
        raise AssertionError("a list for method.alpha was accepted")
    assert load_finetune_config().model.name in (None, "deeplabv3plus")  # still builds
    print("ok")
    """
)


def test_a_method_registered_after_the_config_import_is_chosen_by_name():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
