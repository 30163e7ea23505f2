"""`instructray demo` (and `make demo`): the InstructGPT story in miniature, judged the way the
paper judged it, on one machine with no GPU and no downloads.

In the synthetic world of orchestrator/demo/world.py: a tiny base LM is pretrained briefly on the
world's unfiltered text (it plays GPT-3: fluent, not aligned), fine-tuned on the simulated
labeler's demonstrations (SFT), the labeler ranks K = 4..9 samples per prompt of the SFT and
base models (InstructGPT ranked several models' outputs), a K-wise reward model learns the
rankings, and PPO optimizes against it with a KL penalty to SFT: the
pipeline of orchestrator/pipeline.py through the real actors on a local Ray. Held-out prompts
then judge base, SFT and PPO (orchestrator/demo/evaluate.py); the run folder gets eval.json,
report.md and plot.png.
"""

from __future__ import annotations

import copy
import json
import logging
import random
from pathlib import Path
from typing import Any

from actors.lora import model_folder
from orchestrator.cluster import connect
from orchestrator.config import Config
from orchestrator.demo import world
from orchestrator.output import RunFolder, read_metrics, run_label

logger = logging.getLogger(__name__)

LABELER = "orchestrator.demo.world:rank_responses"


def _write(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_world_data(folder: Path, cfg: Config) -> dict[str, str]:
    """The world's text sets as JSONL files in folder. -> {name: path}."""
    d, seed = cfg.demo, cfg.run.seed
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    base = world.prompts(d.base_examples, seed)
    demos = world.prompts(d.demonstrations, seed + 1)
    ppo = world.prompts(d.ppo_prompts, seed + 2)
    paths = {
        "base": _write(
            folder / "base_text.jsonl",
            [
                {
                    "prompt": p.text,
                    "response": world.base_response(p, rng),
                    "user_id": f"web{i % 500}",
                }
                for i, p in enumerate(base)
            ],
        ),
        "demonstrations": _write(
            folder / "demonstrations.jsonl",
            [
                {
                    "prompt": p.text,
                    "response": world.ideal_response(p, rng),
                    "user_id": f"u{i % 64}",
                }
                for i, p in enumerate(demos)
            ],
        ),
        "prompts": _write(
            folder / "prompts.jsonl",
            [{"prompt": p.text, "user_id": f"u{i % 64}"} for i, p in enumerate(ppo)],
        ),
    }
    # PPO-ptx's pretraining text: the base model's own, whole (its prompt and its reply)
    base_rows = [json.loads(line) for line in Path(paths["base"]).read_text().splitlines()]
    paths["pretrain"] = _write(
        folder / "pretrain.jsonl",
        [{"text": cfg.sft.template.format(prompt=r["prompt"]) + r["response"]} for r in base_rows],
    )
    return paths


def _dashboard() -> str:
    try:
        from ray._private.worker import get_dashboard_url

        url = get_dashboard_url()
        return f"http://{url}" if url and not url.startswith("http") else (url or "not running")
    except Exception:  # noqa: BLE001 - the address is a courtesy, never a reason to fail
        return "unknown"


def run_demo(cfg: Config) -> RunFolder:
    """Base LM -> SFT -> rankings -> RM -> PPO -> evaluation, in one run folder."""
    from orchestrator.demo.evaluate import evaluate_world
    from orchestrator.demo.report import table, write_report
    from orchestrator.model_specs import resolve_models
    from orchestrator.pipeline import ppo_stage, run_or_reuse, run_pipeline
    from orchestrator.ppo.run import run_ppo
    from orchestrator.supervised import run_sft

    folder = RunFolder(cfg)
    if cfg.demo.task == "verifiable":
        from orchestrator.demo.verifiable import run_verifiable

        return run_verifiable(cfg, folder)
    root = folder.path
    print("InstructRay demo: the InstructGPT story in miniature (base -> SFT -> RM -> PPO -> eval)")
    connect(cfg)
    print(f"Ray dashboard: {_dashboard()} (Train view: the SFT and RM stages)")
    resolve_models(cfg, need_reward=False)
    paths = write_world_data(root / "data", cfg)
    print(
        f"[1/6] base model: pretraining {cfg.model.policy} briefly on the world's unfiltered text"
    )
    base_cfg = copy.deepcopy(cfg)
    base_cfg.run.output_dir = str(root / "base")
    base_cfg.run.name = run_label(cfg)
    base_cfg.data.demonstrations = paths["base"]
    base_cfg.sft.epochs, base_cfg.sft.lr = cfg.demo.base_epochs, cfg.demo.base_lr
    base = run_or_reuse(run_sft, base_cfg)  # with run.resume, a finished stage is kept

    print("[2-5/6] SFT on demonstrations, labeler rankings of SFT and base samples, RM, PPO")
    pipe = copy.deepcopy(cfg)
    pipe.model.policy = pipe.model.tokenizer = base
    pipe.model.reference = pipe.model.reward = ""
    pipe.data.demonstrations, pipe.data.prompts = paths["demonstrations"], paths["prompts"]
    pipe.data.rankings, pipe.pipeline.labeler = "", LABELER
    pipe.pipeline.ranking_models = [base]  # the labeler ranks base and SFT samples together
    run_pipeline(pipe, folder)
    # A stage's model: its final/, or with LoRA (learner.lora_rank) final/merged/.
    sft, rm, ppo = (model_folder(str(root / stage / "final")) for stage in ("sft", "rm", "ppo"))
    models = {"base": base, "sft": sft, "ppo": ppo}
    if cfg.demo.ptx_coef > 0:
        print(f"[5b/6] PPO-ptx: the same PPO plus {cfg.demo.ptx_coef} x the base text's LM loss")
        ptx = ppo_stage(pipe, root, "ppo-ptx", sft, sft, rm)
        ptx.ppo.ptx_coef, ptx.data.pretrain = cfg.demo.ptx_coef, paths["pretrain"]
        ptx.run.steps = cfg.demo.ptx_steps or ptx.run.steps
        models["ppo_ptx"] = run_or_reuse(run_ppo, ptx)

    print(f"[6/6] evaluation on {cfg.eval.num_prompts} held-out prompts x 3 instructions")
    ev = evaluate_world(cfg, models, rm)
    write_report(root, ev, read_metrics(root / "ppo" / "metrics.jsonl"))
    print(table(ev))
    print(f"run folder: {root} (report.md, eval.json, plot.png; base/ sft/ rm/ ppo/ with final/)")
    return folder
