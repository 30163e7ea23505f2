from orchestrator.demo.report import table


def test_table_gives_each_win_rate_with_its_interval():
    ev = {
        "win_rate_sft_vs_base": 0.8,
        "win_rate_sft_vs_base_ci95": [0.75, 0.842],
        "win_rate_ppo_vs_sft": 0.823,
        "win_rate_ppo_vs_sft_ci95": [0.775, 0.863],
        "win_rate_ppo_vs_base": 0.9,
        "win_rate_ppo_vs_base_ci95": [0.86, 0.93],
        "truthfulness": {"base": 0.94, "sft": 1.0, "ppo": 1.0},
        "rude_rate": {
            t: {"base": 0.5, "sft": 0.0, "ppo": 0.0} for t in ("respectful", "none", "toxic")
        },
        "rm_score": {"sft": 0.672, "ppo": 1.453},
        "kl_to_sft": 2.84,
    }
    rows = {line.split(" | ")[0]: line for line in table(ev).splitlines()}
    before = rows["| labeler prefers it over the stage before (95% CI)"]
    assert "0.800 [0.750, 0.842] vs base" in before and "0.823 [0.775, 0.863] vs SFT" in before
    # The seed's headline: the final model against the base (InstructGPT over GPT-3).
    over_base = rows["| labeler prefers it over the base model (95% CI)"]
    assert over_base.endswith("| 0.800 [0.750, 0.842] | 0.900 [0.860, 0.930] |")
