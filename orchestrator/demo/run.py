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
import logging

from instructray.actors.lora import model_folder
from instructray.orchestrator.cluster import connect
from instructray.orchestrator.config import Config
from instructray.orchestrator.demo.data import write_world_data
from instructray.orchestrator.output import RunFolder, run_label

logger = logging.getLogger(__name__)

LABELER = "instructray.orchestrator.demo.world:rank_responses"


def _dashboard() -> str:
    try:
        from ray._private.worker import get_dashboard_url

        url = get_dashboard_url()
        return f"http://{url}" if url and not url.startswith("http") else (url or "not running")
    except Exception:  # noqa: BLE001 - the address is a courtesy, never a reason to fail
        return "unknown"


def run_demo(cfg: Config) -> RunFolder:
    """Base LM -> SFT -> rankings -> RM -> PPO -> evaluation, in one run folder."""
    from instructray.orchestrator.demo.evaluate import evaluate_world
    from instructray.orchestrator.demo.report import agreement_line, ppo_stages, table, write_report
    from instructray.orchestrator.model_specs import resolve_models
    from instructray.orchestrator.pipeline import ppo_stage, run_or_reuse, run_pipeline
    from instructray.orchestrator.ppo.run import run_ppo
    from instructray.orchestrator.supervised import run_sft

    folder = RunFolder(cfg)
    if cfg.demo.task == "verifiable":
        from instructray.orchestrator.demo.verifiable import run_verifiable

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
    write_report(root, ev, ppo_stages(root))
    print(table(ev))
    print(agreement_line(ev["labelers_agreement"]))
    print(f"run folder: {root} (report.md, eval.json, plot.png; base/ sft/ rm/ ppo/ with final/)")
    return folder
