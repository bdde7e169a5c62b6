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
    ({"ppo": {}}, "ppo: Extra inputs are not permitted"),
    ({"grpo": {"group_size": 1}}, "grpo.group_size"),
    ({"uniapl": {"lambda_adv": -1}}, "uniapl.lambda_adv"),
    ({"pipeline": {"seeds": []}}, "pipeline.seeds"),
    ({"pipeline": {"seeds": [[0, 1], [1, 2]]}}, "seeds: a seed appears twice"),
    ({"pipeline": {"seeds": [0, 1]}}, "pipeline.seeds.0"),
    ({"pipeline": {"seeds": [[0, 1, 2]]}}, "pipeline.seeds.0"),
    ({"pipeline": {"lambda_sweep": [[0.5, 0.5]]}}, "lambda_sweep: a value appears twice"),
    ({"world": {"ood_n_instructions": 2}}, "ood_n_instructions must exceed"),
    ({"world": {"type_weights": {"made:up": 1.0}}}, "unknown instruction types ['made:up']"),
    ({"grpo": {"disc_cotrain": True}}, "disc_cotrain needs a method with an adversarial term"),
])
def test_bad_params_name_key_and_rule(override, needle):
    with pytest.raises(ConfigError) as e:
        load_params(ROOT / "params.yaml", override)
    assert needle in str(e.value)
    assert "params.yaml" in str(e.value)


def test_method_sections_apply_only_to_their_method():
    p = load_params(ROOT / "params.yaml", {"uniapl": {"lambda_adv": 0.7}})
    assert run_config(p, "uniapl", "student-s", 0).lambda_adv == 0.7
    assert run_config(p, "uniapl_shaped", "student-s", 0).lambda_adv == 0.7  # shaped starts from uniapl's section
    assert run_config(p, "a_grpo", "student-s", 0).lambda_adv != 0.7


def test_not_yaml(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("world: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(f)


def test_pretrain_stage_reads_the_corpus_its_params_name():
    """dvc.yaml's pretrain map (model -> corpus file it depends on) matches pretrain.models.<model>.corpus."""
    import yaml
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = load_params(ROOT / "params.yaml")
    assert stages["pretrain"]["foreach"] == {m: spec.corpus for m, spec in params.pretrain.models.items()}


def test_lambda_sweep_reads_every_uniapl_key_but_lambda_adv():
    """ablate_lambda sets lambda_adv with --set, so it lists the other uniapl.* keys one by one: a key added
    to the uniapl section must be added there too, or the sweep would not re-run when it changes."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    section = yaml.safe_load((ROOT / "params.yaml").read_text())["uniapl"]
    listed = {p for p in stages["ablate_lambda"]["params"] if isinstance(p, str) and p.startswith("uniapl")}
    assert listed == {f"uniapl.{k}" for k in section if k != "lambda_adv"}
    assert "--set lambda_adv=" in stages["ablate_lambda"]["cmd"]


def test_uncached_outputs_are_not_git_ignored():
    """Outputs declared with `cache: false` live only in git: one that .gitignore hides is missing from every
    clone and from `dvc exp run`'s temp copy, so DVC re-runs its stage (this hid the DVCLive curves once)."""
    import os
    import subprocess

    from dvc.repo import Repo

    repo = Repo(str(ROOT))
    paths = sorted({os.path.relpath(o.fs_path, repo.root_dir) for st in repo.index.stages for o in st.outs
                    if not o.use_cache})
    assert paths, "dvc.yaml declares no uncached outputs"
    # A directory output: check a file inside it too, since git cannot re-include files under an ignored dir.
    probes = paths + [os.path.join(p, "x.tsv") for p in paths if not os.path.splitext(p)[1]]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], input="\n".join(probes),
                             capture_output=True, text=True, cwd=ROOT).stdout.split()
    assert not ignored, f".gitignore hides uncached DVC outputs: {ignored[:5]}"


def _uniapl_imports(path, root=ROOT):
    """Files of the project a Python file imports, at module level or inside functions: src/uniapl modules
    (absolute or relative imports) and sibling scripts of experiments/, as paths relative to ``root`` (the
    repository whose src/ and experiments/ the imports resolve in). An import of uniapl that resolves to
    no file fails, so a new import form cannot slip past the check below."""
    import ast

    src = root / "src"
    rel = path.relative_to(root).as_posix()
    package = rel[len("src/"):-len(".py")].split("/")[:-1] if rel.startswith("src/") else []

    def module_file(dotted):
        for cand in (f"{dotted.replace('.', '/')}.py", f"{dotted.replace('.', '/')}/__init__.py"):
            if (src / cand).exists():
                return f"src/{cand}"
        return None

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this file's package
                assert package, f"{rel}: relative import outside a package"
                parent = package[: len(package) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            # `from pkg import name`: name is a submodule, or an attribute of pkg itself
            mods = [f"{base}.{a.name}" if module_file(f"{base}.{a.name}") else base for a in node.names]
        else:
            continue
        for mod in mods:
            if mod.split(".")[0] == "uniapl":
                f = module_file(mod)
                assert f, f"{rel}: cannot resolve `{mod}` to a file under src/"
                found.add(f)
            elif (root / "experiments" / f"{mod}.py").exists() and rel.startswith("experiments/"):
                found.add(f"experiments/{mod}.py")
    return found


def test_stage_code_deps_cover_every_imported_module():
    """Each stage depends on its scripts and on every uniapl module they reach through imports (lazy
    ones included), so a change to, e.g., the IFEval scorer re-runs every stage that scores responses; and
    on no other project code, so a module a stage no longer imports does not re-run it.
    (src/uniapl/__init__.py must stay empty, or it becomes a dependency of every stage.)"""
    import re

    assert not (ROOT / "src" / "uniapl" / "__init__.py").read_text().strip(), \
        "src/uniapl/__init__.py has code: add it to every stage's deps and to this test"
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]  # anchors and `<<:` merges resolved
    for name, st in stages.items():
        body = st.get("do", st)
        scripts = set(re.findall(r"experiments/\S+\.py", body["cmd"]))
        assert scripts, f"dvc.yaml stage {name!r} runs no experiments/ script"
        need, todo = set(scripts), list(scripts)
        while todo:
            for dep in _uniapl_imports(ROOT / todo.pop()) - need - {"src/uniapl/__init__.py"}:
                need.add(dep)
                todo.append(dep)
        code = {d for d in body["deps"] if re.fullmatch(r"(src|experiments)/.*\.py", d)}
        assert not need - code, f"dvc.yaml stage {name!r} lacks code deps {sorted(need - code)}"
        assert not code - need, f"dvc.yaml stage {name!r} depends on code it does not import {sorted(code - need)}"


def test_import_walker_resolves_every_form(tmp_path):
    """The walker behind the deps check follows absolute, relative and `from uniapl import` forms, lazy
    imports inside functions, and fails on a uniapl import it cannot resolve (in a scratch package)."""
    pkg = tmp_path / "src" / "uniapl"
    pkg.mkdir(parents=True)
    for m in ("__init__", "io", "models", "world", "ifeval", "trainer"):
        (pkg / f"{m}.py").write_text("")
    probe = pkg / "_walker_probe.py"
    probe.write_text("import uniapl.io as io_\nfrom . import models\nfrom .world import INSTRUCTION_TYPES\n"
                     "from uniapl import ifeval\ndef f():\n    from uniapl.trainer import Trainer\n")
    assert _uniapl_imports(probe, tmp_path) == {f"src/uniapl/{m}.py" for m in ("io", "models", "world", "ifeval", "trainer")}
    probe.write_text("from uniapl.no_such_module import x\n")
    with pytest.raises(AssertionError, match="cannot resolve"):
        _uniapl_imports(probe, tmp_path)


# Library functions that read params sections a stage script hands them its params object for (the check
# below reads only the scripts): `run_config` reads `train` and the run's method sections (see its use).
PARAMS_READ_BY = {"evaluate_and_score": ["evaluate"], "declared_runs": ["pipeline"]}


def _params_reads(script):
    """What a stage script reads of params.yaml: (reads, whole_file, run_config_uses). ``reads``: dotted keys
    ("pretrain.threads"), whole sections ("teacher_demos", when the section object itself is handed on) and
    "<key>.*" for a subscripted mapping (``p.pretrain.models[name]``). ``whole_file``: the script reads
    params.yaml raw (no ``load_params``). ``run_config_uses``: for each ``run_config(params, method, ...)``
    call, the method literal (None: the run's ``--method``) and the attribute read off its result (or None)."""
    import ast

    tree = ast.parse(script.read_text())
    parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}

    def is_load(n):
        return isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", None)) == "load_params"

    roots = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) and is_load(n.value)
             for t in n.targets if isinstance(t, ast.Name)}
    aliases = {}  # name -> section, e.g. `d = p.discriminator`

    def chain(n):
        """(attrs, base) of an attribute chain on a params object: p.a.b -> (["a", "b"], p)."""
        attrs = []
        while isinstance(n, ast.Attribute):
            attrs.insert(0, n.attr)
            n = n.value
        if isinstance(n, ast.Name) and n.id in aliases:
            return [aliases[n.id]] + attrs, n
        if (isinstance(n, ast.Name) and n.id in roots) or is_load(n):
            return attrs, n
        return None, n

    for n in ast.walk(tree):  # aliases first (a script's assignments precede their uses)
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Attribute) and len(n.targets) == 1 \
                and isinstance(n.targets[0], ast.Name):
            attrs, _ = chain(n.value)
            if attrs and len(attrs) == 1:
                aliases[n.targets[0].id] = attrs[0]
    reads, runs = set(), []
    for n in ast.walk(tree):
        if isinstance(n, ast.Call):
            name = getattr(n.func, "id", getattr(n.func, "attr", None))
            if n.args and chain(n.args[0])[0] == []:  # the params object itself handed on
                if name in PARAMS_READ_BY:
                    reads.update(PARAMS_READ_BY[name])
                if name == "run_config":
                    method = n.args[1].value if len(n.args) > 1 and isinstance(n.args[1], ast.Constant) else None
                    up = parents.get(n)
                    runs.append((method, up.attr if isinstance(up, ast.Attribute) else None))
            if name == "declared_runs":
                reads.update(PARAMS_READ_BY[name])
        if not isinstance(n, (ast.Attribute, ast.Name)) or isinstance(parents.get(n), ast.Attribute) or \
                isinstance(n.ctx, ast.Store):
            continue  # only whole chains that are read
        attrs, base = chain(n)
        if not attrs or (isinstance(n, ast.Name) and n.id not in aliases) or \
                (isinstance(parents.get(n), ast.Assign) and parents[n].value is n and len(attrs) == 1):
            continue  # not params, a bare root, or an alias definition
        up, in_raise = n, False
        while up in parents and not in_raise:
            up = parents[up]
            in_raise = isinstance(up, ast.Raise)
        if in_raise:
            continue  # an error message: no output depends on it
        up = parents.get(n)
        if (isinstance(up, ast.Subscript) and up.value is n) or \
                (isinstance(up, ast.Compare) and n in up.comparators and isinstance(up.ops[0], (ast.In, ast.NotIn))):
            reads.add(".".join(attrs[:2]) + ".*")  # one entry of a mapping (`p.pretrain.models[name]`)
        else:
            reads.add(".".join(attrs[:2]))
    text = script.read_text()
    whole_file = "load_params" not in text and "params.yaml" in text
    return reads, whole_file, runs


def test_stage_scripts_read_only_declared_params():
    """Every params.yaml key a stage's script reads is among the stage's `params` (DVC re-runs a stage only
    for those): a read of `a.b` needs `a` or `a.b` declared; a section handed on whole needs the section or
    each of its keys; a script that reads params.yaml raw needs the whole file. run_config reads `train` and
    the run's method sections, less the keys the stage's `--set` overrides."""
    import shlex

    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    from uniapl.methods import METHODS

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    cache, problems = {}, []
    commands = []  # (stage, argv of one command): a side-by-side stage's commands one by one
    for st in Repo(str(ROOT)).index.stages:
        argv = shlex.split(st.cmd)
        if argv[1:2] == ["experiments/side_by_side.py"]:
            rest = argv[2:]
            if rest[:1] == ["--jobs"]:
                rest = rest[2:]
            commands += [(st, shlex.split(c)) for c in rest]
        else:
            commands.append((st, argv))
    for st, argv in commands:
        script = next(a for a in argv if a.startswith("experiments/") and a.endswith(".py"))
        if script not in cache:
            cache[script] = _params_reads(ROOT / script)
        reads, whole_file, runs = cache[script]
        declared = [d for d in st.deps if isinstance(d, ParamsDependency) and d.def_path == "params.yaml"]
        if declared and not declared[0].params:  # the whole file
            continue
        keys = set(declared[0].params) if declared else set()
        if whole_file:
            problems.append(f"{st.name}: {script} reads params.yaml raw: declare the whole file (- params.yaml:)")
        opt = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
        sets = {argv[i + 1].split("=")[0] for i in range(len(argv) - 1) if argv[i] == "--set"}
        need = set(reads)
        for method, attr in runs:
            run_method = method or opt.get("--method") or raw["selection"]["grid"][opt["--candidate"]]["method"]
            sections = METHODS[run_method].param_sections
            if attr:  # one setting of the run: from the method's section, else from train
                own = [s for s in sections if attr in (raw.get(s) or {})]
                need |= {f"{s}.{attr}" for s in own} or {f"train.{attr}"}
            else:
                need |= {"train", *sections}

        def covered(r):
            if r.endswith(".*"):
                base = r[:-2]
                return any(k == base or base.startswith(k + ".") or k.startswith(base + ".") for k in keys)
            if any(r == k or r.startswith(k + ".") for k in keys):
                return True
            # a whole section: fine when each of its keys is declared (the --set ones are the run's own)
            section = raw.get(r)
            return "." not in r and isinstance(section, dict) and \
                all(f"{r}.{k}" in keys for k in section if not (k in sets and r in METHODS))
        problems += [f"{st.name}: {script} reads {r!r}, not in its params" for r in sorted(need) if not covered(r)]
    assert not problems, "\n".join(problems)


def test_loading_params_does_not_import_the_checkers():
    """load_params validates instruction types against uniapl.world, which imports the IFEval checkers
    (lm-evaluation-harness, nltk: seconds of import) only where it checks responses."""
    import subprocess
    import sys

    code = ("import sys; from uniapl.config import load_params; load_params(sys.argv[1]); "
            "print(sorted(m for m in ('lm_eval', 'nltk', 'langdetect', 'uniapl.ifeval') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "params.yaml")], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]", out
