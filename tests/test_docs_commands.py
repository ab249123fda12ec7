"""Every command README.md and docs/*.md show in a code block runs in CI's default run.

Each documented command is matched by exactly one rule below: it runs (a smoke run at a
small size: the documented command with size flags appended, which override the
flagfile's since absl keeps the last value) or it is skipped with the reason written next
to it. A command added to the docs that no rule covers fails
`test_every_documented_command_has_a_rule`, so the docs cannot grow a command CI never
runs. The commands run in document order (README first) in one scratch folder laid out
like the repository root (`configs/` and `benchmarks/` linked, small random .npy files where
a command reads the user's own gallery or packing). docs/walkthrough.md, which runs every
bridges command on the demo models, is run as written by the session fixture
`walked_demo` (tests/conftest.py; checked by tests/test_walkthrough.py). The docs' bridges
commands on the published weights run on its demo models: `weights/` is linked to the
demo's weights (same layouts), `verification/` to its .bin set, model folders to its
trained model; a bridges command whose flags are a subset of a walk-through command's
(paths and numbers aside) is not run twice. Benchmarks run at a tiny size (each script's
own size flags appended). A command written twice in the docs runs once.
"""

import os
import re
import shlex
import subprocess

import numpy as np
import pytest

from tests.conftest import REPO, cli_env, walkthrough_commands

DOCS = [REPO / "README.md",
        *sorted(p for p in (REPO / "docs").glob("*.md") if p.name != "walkthrough.md")]
SMALL_N = 64  # identities of every smoke packing
COMMAND = re.compile(r"^(python|torchrun|accelerate|pip|[A-Z_]+=\S+ |nice|taskset|for |export |"
                     r"cd |gcloud|ruff)")


def documented_commands() -> list[tuple[str, str]]:
    """(doc file, command) for each command line of the docs' code blocks, in order."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"```\w*\n(.*?)```", doc.read_text(), re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                command = " ".join(re.sub(r"\s+#.*$", "", line).split())
                if COMMAND.match(command):
                    found.append((doc.name, command))
    return found


# ------------------------------------------------------------------------------- rules

PACK_SMALL = f"--num_identities={SMALL_N} --steps=4 --log_every=2 --checkpoint_every=4 --noprogress"
GENERATE_SMALL = ("--detector=weights/buffalo_l/det_10g.onnx --identities=0:2 "
                  "--images_per_identity=2 --micro_batch=2 --steps=2 --noprogress")
TRAIN_SMALL = ("--arch=ir18 --width=8 --input_size=32 --embedding_size=64 --batch_size=4 "
               "--epochs=1 --lr_steps=1 --workers=0 --noprogress")
COMPARE_SMALL = (f"--num_identities={SMALL_N} --steps=4 --log_every=2 --checkpoint_every=4 "
                 "--seeds=1 --noprogress")


def skip(reason: str):
    return ("skip", reason)


def run(append: str = "", *, own_out_dir: bool = False, demo: bool = False,
        pass_through: str = ""):
    """Run the command with `append` (before a `--`, if any); `own_out_dir`: in a folder of
    its own (the same documented folder with other sizes would be refused as another
    run's); `demo`: on the walk-through's demo models and outputs; `pass_through`: flags
    after `--` (a benchmark hands them to the command it runs)."""
    return ("run", (append, own_out_dir, demo, pass_through))


FRAGMENT = skip("a fragment: '...', $VARIABLES or [optional] parts stand for the user's own "
                "values; the full form of the same command runs under another rule")
# (pattern searched in the command, action). The first match wins.
RULES = [
    (r"^pip install -e \. && python -m hyperface_jax\.pack --flagfile=configs/quickstart\.flags$",
     run()),  # the README's first command, at its full size (the install is .ci/run's)
    (r"^pip install", skip("installs packages: .ci/run installs the project the same way")),
    (r"python -m pytest|^ruff ", skip("the tests and the linter: CI's own job")),
    (r"=\.\.\.|\s\.\.\.(\s|$)|\$[A-Z]|\[--|^export |^FLAGS=|^for (head|k) in", FRAGMENT),
    (r"--distributed|--coordinator_address|--nnodes|^gcloud |^cd hyperface-jax",
     skip("several hosts: tests/test_sharding.py runs 2 local processes of 2 devices")),
    (r"^torchrun --nproc_per_node=8|^accelerate launch --num_processes=8",
     skip("8 processes: tests/test_recognition_train.py and tests/test_bridges_generate.py "
          "run the same launchers with 2")),
    (r"^accelerate launch --multi_gpu", FRAGMENT),
    (r"SLURM_ARRAY_TASK_ID", skip("a SLURM array job: the --identities slice it uses runs in "
                                  "tests/test_bridges_generate.py")),
    (r"--ijb=/data/", skip("needs the IJB-B/C data: tests/test_ijb.py runs --ijb on a set in "
                           "the IJB layout")),
    # Benchmarks: each once, at a size of seconds (argparse keeps an option's last value).
    (r"benchmarks/synthetic_gallery\.py", run("--identities=16 --per_identity=2")),
    (r"benchmarks/sweep_baselines\.py", run("--num_identities=16 --max_draws=200")),
    (r"benchmarks/bench_analyze\.py",
     run("--rows=256 --dim=16 --per_identity=8 --data_dir=bench_analyze")),
    (r"benchmarks/simulate_dataset\.py", run("--per_identity=2")),
    (r"benchmarks/bench_sharding\.py", run("--n=64 --d=16 --m=64 --batch=16 --steps=2 "
                                           "--devices 2 --host_devices=2 --tile_size=32")),
    (r"benchmarks/frontier\.py codes ", run("--sizes 64")),
    (r"^nice -n 5 python benchmarks/frontier\.py pack --sizes 2048 10000 --out runs/frontier$",
     run("--sizes 64", pass_through=PACK_SMALL.replace(f"--num_identities={SMALL_N} ", "")
         + " --tile_size=64")),
    (r"benchmarks/frontier\.py pack ",
     skip("frontier.py pack with the flags of its smoke run above (the README's first); the "
          "pack flags after -- are pack's own, which its smoke runs cover")),
    (r"^python benchmarks/frontier\.py report --sizes 2048 10000 50000 100000 --out "
     r"runs/frontier$", run("--sizes 64")),
    (r"benchmarks/frontier\.py report ", skip("frontier.py report with the flags of its smoke "
                                              "run above (the README's first)")),
    # Its two runs are linked to the frontier pack smoke run's folder (work fixture).
    (r"benchmarks/frontier\.py batches ", run()),
    (r"^python benchmarks/gemm_limit\.py --n 256 ", run()),  # its own smoke size
    (r"^(nice -n \d+ |taskset -c \d+ )*python benchmarks/",
     skip("a benchmark at its measured size (minutes to hours)")),
    (r"^python -m bridges\.recognition\.digits|^for s in 0 1 2; do python -m bridges\.evaluate",
     skip("trains and evaluates 9 models on digits: tests/test_recognition_digits.py")),
    (r"/tmp/ddp", skip("docs/recognition.md's DDP check: tests/test_recognition_train.py runs "
                       "it")),
    # The bridges commands on the published weights: on the demo models (demo_work).
    (r"^torchrun --nproc_per_node=4 -m bridges\.gallery",
     skip("4 processes: tests/test_bridges_gallery.py runs the same launcher with 2 and "
          "checks their files are one process's")),
    (r"^python -m bridges\.embed .*--detector=mtcnn",
     skip("MTCNN (real weights, from the facenet-pytorch wheel) finds no face in the demo's "
          "noise images: tests/test_mtcnn.py runs bridges.embed with these flags on a real "
          "photo")),
    (r"^python -m bridges\.generate --flagfile=configs/generate_paper\.flags --references=",
     run(GENERATE_SMALL, demo=True)),
    (r"^python -m bridges\.generate --flagfile=configs/generate_paper\.flags$",
     skip("the flagfile alone: the README's smoke run of it with two more flags covers it")),
    (r"^python -m bridges\.train --flagfile=configs/train_hyperface\.flags --data=datasets/",
     run(TRAIN_SMALL, demo=True)),
    (r"^python -m bridges\.train --flagfile=configs/train_hyperface\.flags --data=dataset/ "
     r"--exclude=", skip("needs the drop list analyze writes from a generated set and real "
                         "crops: tests/test_clean_loop.py runs embed, analyze --clean_top_k and "
                         "train --exclude on tiny models")),
    (r"^python -m bridges\.train --flagfile=configs/train_hyperface\.flags --data=dataset/ ",
     skip("the flags of the README's train smoke run (its --data folder: the demo's)")),
    (r"^python -m bridges\.evaluate --models=.* --names=", run(demo=True)),
    (r"^python -m bridges\.evaluate --models=", skip("the flags of the README's evaluate "
                                                     "--models smoke run, less --names")),
    (r"^python -m bridges\.", run(demo=True)),
    (r"^python -c \"import numpy", run()),
    (r"^[A-Z]+=\"", FRAGMENT),
    (r"python -m hyperface_jax\.compare --suite=", skip("the workload suite: tests/test_compare.py "
                                                       "runs this command at 2 % of its size")),
    (r"python -m hyperface_jax\.analyze --embeddings=(runs/gen|features|runs/simulated)",
     skip("reads embeddings of a generated dataset (bridges.embed) or a benchmark's "
          "simulation: analyze runs on such files in docs/walkthrough.md")),
    (r"python -m hyperface_jax\.compare .*--gallery=runs/gallery128",
     skip("needs benchmarks/synthetic_gallery.py's gallery; tests/test_compare.py runs "
          "compare with a gallery and samplers")),
    (r"python -m hyperface_jax\.pack --help", run()),
    (r"python -m hyperface_jax\.pack --flagfile=configs/paper_10k\.flags", run(PACK_SMALL)),
    (r"python -m hyperface_jax\.pack .*(million|paper_50k_stochastic)\.flags",
     run(PACK_SMALL + " --batch_size=16 --figure_sample=32", own_out_dir=True)),
    (r"python -m hyperface_jax\.pack .*codes_10k\.flags",
     run(PACK_SMALL + " --neighbor_refresh_every=2", own_out_dir=True)),
    (r"python -m hyperface_jax\.pack --flagfile=configs/spherical_codes\.flags",
     run("--steps=4 --log_every=2 --checkpoint_every=4 --noprogress", own_out_dir=True)),
    (r"python -m hyperface_jax\.pack ", run(PACK_SMALL, own_out_dir=True)),
    (r"python -m hyperface_jax\.sample --method=hyperface", run(PACK_SMALL, own_out_dir=True)),
    (r"python -m hyperface_jax\.sample ", run(f"--num_identities={SMALL_N}", own_out_dir=True)),
    # Two of its four optimizers (an optax one and ours): the tuning path is the same for each.
    (r"python -m hyperface_jax\.compare .*--tune",
     run(COMPARE_SMALL + " --tune_trials=2 --final_seeds=1 --optimizers=adam,riemannian_adam",
         own_out_dir=True)),
    (r"python -m hyperface_jax\.compare ", run(COMPARE_SMALL, own_out_dir=True)),
    (r"python -m hyperface_jax\.figures ", run()),
]


def _flags(words: list[str]) -> dict[str, str]:
    return dict((w[2:].split("=", 1) + [""])[:2] for w in words if w.startswith("--"))


def _kind(value: str) -> str:
    """Paths and numbers stand for the user's own; any other value is part of the form."""
    if re.fullmatch(r"[-+0-9.e:,]+", value):
        return "number"
    return "path" if "/" in value or re.search(r"\.[a-z]+$", value) else value


def walkthrough_twin(command: str) -> str | None:
    """The docs/walkthrough.md command of the same bridges module that has every flag of
    `command` with values of the same kind (paths and numbers aside), if any: the
    walk-through runs that form already, on the demo models."""
    if not command.startswith("python -m bridges.") or "..." in command:
        return None
    words = shlex.split(command)
    flags = _flags(words)
    for walked in walkthrough_commands():
        w = shlex.split(walked)
        twin = _flags(w)
        if w[:3] == words[:3] and "flagfile" not in flags and all(
                name in twin and _kind(value) == _kind(twin[name])
                for name, value in flags.items()):
            return walked
    return None


def rule_for(command: str):
    if twin := walkthrough_twin(command):
        return skip(f"docs/walkthrough.md runs this form on the demo models: {twin}")
    for pattern, action in RULES:
        if re.search(pattern, command):
            return action
    return None


def test_every_documented_command_has_a_rule():
    missing = [(doc, c) for doc, c in documented_commands() if rule_for(c) is None]
    assert not missing, f"documented commands that no rule runs or skips: {missing}"


def test_the_docs_show_many_commands_and_most_run():
    actions = [rule_for(c)[0] for _, c in documented_commands()]
    assert len(actions) > 60 and actions.count("run") > 25


# ------------------------------------------------------------------------------ the runs

def _unit_rows(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A scratch folder laid out like the repository root, with small random inputs in
    place of the user's gallery, init faces and packings."""
    root = tmp_path_factory.mktemp("docs_commands")
    (root / "configs").symlink_to(REPO / "configs")
    (root / "benchmarks").symlink_to(REPO / "benchmarks")
    rng = np.random.default_rng(0)
    (root / "runs").mkdir()
    for name, rows in (("runs/gallery.npy", 96), ("runs/init.npy", SMALL_N),
                       ("runs/init50k.npy", SMALL_N), ("G.npy", 96), ("gallery.npy", 512)):
        np.save(root / name, _unit_rows(rng, rows, 512))
    np.save(root / "gallery_labels.npy", np.repeat(np.arange(256), 2))  # identities: diffr
    # The packings docs/frontier.md measures (made by a benchmark at 50k-100k rows).
    for run_dir in ("frontier/n50000", "frontier/n100000", "frontier_2h/n50000"):
        (root / "runs" / run_dir).mkdir(parents=True)
        np.save(root / "runs" / run_dir / "embeddings.npy", _unit_rows(rng, SMALL_N, 512))
    # docs/frontier.md's two 100k runs: the frontier.py pack smoke run's (README, earlier).
    for run_dir in ("batches_alg2", "batches_listed"):
        (root / "runs" / run_dir).mkdir()
        (root / "runs" / run_dir / "n100000").symlink_to("../frontier/n64")
    # The user's own files the docs name: embeddings of all init faces, a sampler's packing.
    np.save(root / "runs" / "init_all.npy", _unit_rows(rng, SMALL_N, 512))
    samplers = root / "runs" / "compare_samplers" / "samplers" / "diffr" / "seed0"
    samplers.mkdir(parents=True)
    np.save(samplers / "embeddings.npy", _unit_rows(rng, SMALL_N, 128))
    # docs/optimizers.md's own-optimizer example names my_package.my_module:my_factory.
    (root / "my_package").mkdir()
    (root / "my_package" / "__init__.py").write_text("")
    (root / "my_package" / "my_module.py").write_text(
        "import optax\n\n\ndef my_factory(learning_rate, momentum=None):\n"
        "    return optax.sgd(learning_rate, momentum=momentum)\n")
    return root


@pytest.fixture(scope="module")
def demo_work(work, walked_demo):
    """`work` with the published weights' places linked to the walk-through's demo models
    (same layouts), its .bin set and its trained model (read only: nothing is written
    into the demo)."""
    demo = walked_demo["root"] / "demo"
    links = {"weights": demo / "weights", "verification": demo / "bins",
             "crops112": demo / "dataset" / "000000",
             **{f"runs/{name}": demo / "runs" / "train"
                for name in ("hyperface", "diffr", "vec2face")}}
    for name, target in links.items():
        if not (work / name).exists():
            (work / name).symlink_to(target)
    return work


def _run(command: str, cwd, timeout=900) -> subprocess.CompletedProcess:
    env = cli_env(PYTHONPATH=os.pathsep.join([str(cwd), str(REPO)]))
    return subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _runnable():
    params, seen = [], set()
    for i, (doc, command) in enumerate(documented_commands()):
        action = rule_for(command)
        if action and action[0] == "run" and command not in seen:  # twice written: once run
            seen.add(command)
            params.append(pytest.param(i, command, id=f"{doc}:{i}:{command[:60]}"))
    return params


@pytest.mark.parametrize("index,command", _runnable())
def test_documented_command_runs_at_a_small_size(index, command, work, request):
    append, own_out_dir, demo, pass_through = rule_for(command)[1]
    if demo:
        request.getfixturevalue("demo_work")
    words = shlex.split(command.removeprefix("pip install -e . && "))
    if "--help" not in words:
        extra = shlex.split(append) + ([f"--out_dir=smoke/{index}"] if own_out_dir else [])
        cut = words.index("--") if "--" in words else len(words)
        passed = shlex.split(pass_through)
        words = words[:cut] + extra + (words[cut:] or ["--"] * bool(passed)) + passed
    r = _run(shlex.join(words), work)
    assert r.returncode == 0, (shlex.join(words), r.stderr[-3000:])
    if index == 0:  # the README's first command: the quickstart at its full size
        embeddings = np.load(work / "runs" / "quickstart" / "embeddings.npy")
        assert embeddings.shape == (2000, 512)
        np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-3)
