"""The configuration layer: documented fields, validated bounds, sections derived from the methods table,
and config at the bottom of the import graph (no circle, no torch)."""
import ast
import subprocess
import sys

import pytest
from pydantic import BaseModel

from uniapl import config as C
from uniapl.methods import METHODS

from conftest import ROOT

SRC = ROOT / "src" / "uniapl"


def _config_classes():
    return [v for v in vars(C).values() if isinstance(v, type) and issubclass(v, BaseModel)
            and v.__module__ == C.__name__ and v is not C.Strict]


@pytest.mark.parametrize("cls", _config_classes(), ids=lambda c: c.__name__)
def test_every_config_field_has_a_doc_line(cls):
    undocumented = [name for name, f in cls.model_fields.items()
                    if not (f.description and f.description.strip()) and not (cls is C.Params and name in METHODS)]
    assert not undocumented, f"{cls.__name__}: fields without a doc line: {undocumented}"


def test_method_sections_are_derived_from_the_methods_table():
    sections = set(C.Params.model_fields) - set(C._ParamsBase.model_fields)
    assert sections == set(METHODS)
    assert METHODS["uniapl_shaped"].param_sections == ("uniapl", "uniapl_shaped")
    assert METHODS["grpo"].param_sections == ("grpo",)


@pytest.mark.parametrize("override, needle", [
    ({"train": {"clip_low": 1.2}}, "train.clip_low: Input should be less than 1"),
    ({"grpo": {"clip_high": 0}}, "grpo.clip_high: Input should be greater than 0"),
    ({"uniapl": {"w_sft": -0.5}}, "uniapl.w_sft: Input should be greater than or equal to 0"),
    ({"uniapl": {"w_rl": -1}}, "uniapl.w_rl"),
    ({"train": {"grad_clip": 0}}, "train.grad_clip"),
    ({"train": {"disc_lr": 0}}, "train.disc_lr"),
    ({"discriminator": {"lr": -1}}, "discriminator.lr"),
    ({"discriminator": {"num_kv_heads": 3}}, "num_kv_heads (3) must divide num_heads (4)"),
    ({"world": {"type_weights": {"punctuation:no_comma": -1}}}, "must be >= 0"),
])
def test_bounds_are_validated_and_named(override, needle):
    with pytest.raises(C.ConfigError) as e:
        C.load_params(ROOT / "params.yaml", override)
    assert needle in str(e.value) and "params.yaml" in str(e.value)


def test_a_typo_in_train_is_named_by_its_place_in_the_file():
    """A user's typo: the message names the file and `train.<key>`, not a run or `<root>`."""
    with pytest.raises(C.ConfigError) as e:
        C.load_params(ROOT / "params.yaml", {"train": {"gruop_size": 4}})
    msg = str(e.value)
    assert msg.splitlines()[0].endswith("params.yaml: invalid configuration")
    assert "train.gruop_size: Extra inputs are not permitted" in msg
    assert "<root>" not in msg and "run " not in msg


def test_missing_params_file_is_a_config_error(tmp_path):
    with pytest.raises(C.ConfigError, match="no such params file"):
        C.load_params(tmp_path / "nope.yaml")


def _module_level_imports(path):
    """uniapl modules a file imports at module level (not inside functions; `if TYPE_CHECKING` excluded)."""
    tree = ast.parse(path.read_text())
    out = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body + node.orelse + getattr(node, "finalbody", [])
                      + [h for hs in getattr(node, "handlers", []) for h in hs.body])
            elif isinstance(node, ast.Import):
                out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("uniapl."))
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level:  # relative: `from . import x` / `from .x import y`
                    mod = "uniapl" + ("." + mod if mod else "")
                if mod == "uniapl":
                    out.update(a.name for a in node.names if (SRC / f"{a.name}.py").exists())
                elif mod.startswith("uniapl."):
                    out.add(mod.split(".")[1])

    visit(tree.body)
    return out


def test_no_import_circle_in_the_package():
    graph = {p.stem: _module_level_imports(p) for p in SRC.glob("*.py")}
    for mod, deps in graph.items():
        assert not deps - set(graph), f"{mod} imports unknown uniapl modules {deps - set(graph)}"

    def reach(start):
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
        return seen

    circles = sorted(m for m in graph if m in reach(m))
    assert not circles, f"modules that import themselves back through module-level imports: {circles}"


def test_config_is_the_bottom_floor():
    """config imports no torch and none of the package's modules that import config back."""
    code = ("import sys; import uniapl.config; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('uniapl.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    loaded = set(ast.literal_eval(out))
    assert "torch" not in loaded
    assert loaded == {"uniapl.config", "uniapl.errors", "uniapl.instructions", "uniapl.methods"}, loaded
    for mod in loaded - {"uniapl.config"}:
        assert "config" not in _module_level_imports(SRC / f"{mod.split('.')[1]}.py"), mod


def test_vllm_is_cap_needs_the_vllm_engine():
    """The importance-sampling correction is between vLLM's sampler and the trainer: with hf both are the
    same computation, so a cap there is a mistake, named by its place in the file."""
    with pytest.raises(C.ConfigError) as e:
        C.load_params(ROOT / "params.yaml", {"train": {"vllm_is_cap": 2.0}})
    assert "vllm_is_cap needs rollout_engine=vllm" in str(e.value)
    p = C.load_params(ROOT / "params.yaml", {"train": {"rollout_engine": "vllm", "vllm_is_cap": 2.0}})
    assert C.run_config(p, "grpo", "student-s", 0).vllm_is_cap == 2.0
    with pytest.raises(C.ConfigError, match="vllm_is_cap"):
        C.load_params(ROOT / "params.yaml", {"train": {"rollout_engine": "vllm", "vllm_is_cap": 0.5}})
