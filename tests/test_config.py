import pytest
import yaml

from uniapl.config import ConfigError, load_params, run_config

from conftest import ROOT


def test_default_params_validate():
    p = load_params(ROOT / "params.yaml")
    assert p.pretrain.models["teacher"].hidden_size >= p.pretrain.models["student-m"].hidden_size
    for m in ("sft", "grpo", "uniapl", "a_chord"):
        assert run_config(p, m, "student-s", 1).method == m


@pytest.mark.parametrize("override, needle", [
    ({"world": {"n_trian": 5}}, "world.n_trian: Extra inputs are not permitted"),
    ({"world": {"n_train": "many"}}, "world.n_train: Input should be a valid integer"),
    ({"pretrain": {"dtype": "fp8"}}, "pretrain.dtype"),
    ({"train": {"lrr": 1e-4}}, "train.lrr: Extra inputs are not permitted"),
    ({"train": {"mu_peak": 0.1, "mu_valley": 0.5}}, "mu_valley (0.5) must not exceed mu_peak (0.1)"),
    ({"method_overrides": {"ppo": {}}}, "method_overrides.ppo: unknown method"),
    ({"method_overrides": {"grpo": {"group_size": 1}}}, "method_overrides.grpo.group_size"),
    ({"world": {"ood_n_instructions": 2}}, "ood_n_instructions must exceed"),
    ({"world": {"type_weights": {"made:up": 1.0}}}, "unknown instruction types ['made:up']"),
    ({"method_overrides": {"grpo": {"disc_cotrain": True}}}, "disc_cotrain needs a method with an adversarial term"),
])
def test_bad_params_name_key_and_rule(override, needle):
    with pytest.raises(ConfigError) as e:
        load_params(ROOT / "params.yaml", override)
    assert needle in str(e.value)
    assert "params.yaml" in str(e.value)


def test_not_yaml(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("world: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(f)
