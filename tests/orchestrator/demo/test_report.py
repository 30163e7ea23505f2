from instructray.orchestrator.demo.report import table

WIN_RATES = {
    "win_rate_sft_vs_base": 0.8,
    "win_rate_sft_vs_base_ci95": [0.75, 0.842],
    "win_rate_ppo_vs_sft": 0.823,
    "win_rate_ppo_vs_sft_ci95": [0.775, 0.863],
    "win_rate_ppo_vs_base": 0.9,
    "win_rate_ppo_vs_base_ci95": [0.86, 0.93],
}


def test_table_gives_each_win_rate_with_its_interval():
    ev = {
        **WIN_RATES,
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


def test_a_ppo_ptx_run_gets_its_column_and_the_alignment_tax_row():
    three = {"base": 0.9, "sft": 1.0, "ppo": 1.0}
    ev = {
        **WIN_RATES,
        "win_rate_ppo_ptx_vs_sft": 0.7,
        "win_rate_ppo_ptx_vs_sft_ci95": [0.6, 0.8],
        "win_rate_ppo_ptx_vs_base": 0.85,
        "win_rate_ppo_ptx_vs_base_ci95": [0.8, 0.9],
        "truthfulness": {**three, "ppo_ptx": 0.95},
        "rude_rate": {t: {**three, "ppo_ptx": 0.0} for t in ("respectful", "none", "toxic")},
        "rm_score": {"sft": 0.672, "ppo": 1.453},
        "kl_to_sft": 2.84,
        "lm_loss_base_text": {"base": 1.5, "sft": 1.9, "ppo": 2.4, "ppo_ptx": 1.7},
    }
    lines = table(ev).splitlines()
    assert lines[0] == "| measure | base | SFT | PPO | PPO-ptx |"
    assert all(line.count("|") == 6 for line in lines)  # every row has the four columns
    rows = {line.split(" | ")[0]: line for line in lines}
    assert rows["| labeler prefers it over the stage before (95% CI)"].endswith(
        "| 0.700 [0.600, 0.800] vs SFT |"
    )
    tax = rows["| alignment tax: LM loss on held-out base-model text (nats per token)"]
    assert tax.endswith("| 1.500 | 1.900 | 2.400 | 1.700 |")
