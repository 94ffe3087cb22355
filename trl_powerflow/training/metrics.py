"""What the trainer logs: the TB metrics of each micro-batch (one gather), the entropy at the sampling temperature,
and GRPO's completions table with PowerFlow's columns (w, log Z', residual)."""

import os

import torch

from ..losses import EXACT_OBJECTIVES, effective_sample_size, sequence_stats
from .guards import check_training_health
from .target_distance import target_distance_metrics


def log_tb_metrics(trainer, mode, mask, log_z, stats, entropies, kl_sum, inputs, loss) -> None:
    """Gather the per-sequence statistics once; check them (`check_training_health`); log residual, log Z', per-token
    log-probs, length, ESS, entropy and (beta > 0) KL, over the rows with tokens; keep each row of the generation batch
    as first trained (the completions table's columns; the distance to the target once every row is in)."""
    with torch.no_grad():
        ent, _ = sequence_stats(entropies.detach(), mask)
        old = inputs.get("old_per_token_logps")  # the sampler's log-probs when reused; else pi_theta is the sampler
        s_sampler = stats["s_pi"] if old is None else sequence_stats(old, mask)[0]
        columns = [stats["residual"], stats["weight"], stats["valid"].float(), log_z.detach().float(), stats["s_pi"]]
        columns += [stats["s_base"], stats["length"], ent, torch.zeros_like(ent) if kl_sum is None else kl_sum.float()]
        columns += [inputs["row_index"].float(), loss.detach().float().expand_as(ent), stats["log_ratio"].float()]
        columns += [s_sampler.float(), inputs["psi"].float()]
        # One gather and one device-to-host copy per micro-batch; everything below runs on the CPU.
        gathered = trainer.accelerator.gather(torch.stack(columns, dim=1)).double().cpu()
        res, weight, valid, log_z, s_pi, s_base, length, ent, kl, row, losses, log_ratio, s_old, psi = gathered.unbind(
            1
        )
        valid = valid.bool()
        ratio = torch.exp(log_ratio - log_ratio[valid].max()) if valid.any() else log_ratio  # scale-free for ESS
        step = trainer.state.global_step + (mode == "train")
        check_training_health(trainer.args, step, mode, losses, res[valid], log_z[valid], ratio, valid)
        # per generated row of this mode's batch (an eval inside a train batch keeps its own), as first trained:
        row, rows = row.long(), trainer._batch_rows.get(mode)
        if rows is None or rows.size(0) <= row.max():  # (w, log Z', r, S_sampler, S_base, |y|, psi); set at generation
            rows = trainer._batch_rows[mode] = torch.full((int(row.max()) + 1, 7), float("nan"))
        first = torch.isnan(rows[row, 4])
        rows[row[first]] = torch.stack([weight, log_z, res, s_old, s_base, length, psi], dim=1)[first].float()
        rows[row[first & ~valid], :3] = float("nan")  # no TB values for rows without tokens
        metrics = trainer._metrics[mode]
        if first.any() and not torch.isnan(rows[:, 4]).any() and logs_target_distance(trainer):
            trainer._distance_rows.setdefault(mode, []).append(rows)  # a whole generation batch: distance at log time
        tokens = length.sum().clamp(min=1.0)
        # completions with no tokens left (e.g. masked truncations) are not in the loss: say how many
        metrics["powerflow/frac_no_tokens"].append(1.0 - valid.float().mean().item())
        metrics["powerflow/ess"].append(effective_sample_size(weight, valid).item())
        metrics["powerflow/ess_unclipped"].append(effective_sample_size(ratio, valid).item())
        if valid.any():
            r, w = res[valid], weight[valid]
            metrics["powerflow/residual_mean"].append(r.mean().item())
            metrics["powerflow/residual_std"].append(r.std(unbiased=False).item())
            metrics["powerflow/residual_abs_mean"].append(r.abs().mean().item())
            metrics["powerflow/log_z_mean"].append(log_z[valid].mean().item())
            metrics["powerflow/completion_length"].append(length[valid].mean().item())
            clipped = (w <= 1 - trainer.epsilon_low + 1e-6) | (w >= 1 + trainer.epsilon_high - 1e-6)
            metrics["powerflow/weight_mean"].append(w.mean().item())
            metrics["powerflow/weight_clip_ratio"].append(clipped.float().mean().item())
        metrics["powerflow/policy_logp_per_token"].append((s_pi.sum() / tokens).item())
        metrics["powerflow/base_logp_per_token"].append((s_base.sum() / tokens).item())
        metrics["entropy"].append((ent.sum() / tokens).item())
        if kl_sum is not None:  # beta > 0: token-weighted mean k3 KL to the base model, as GRPO logs it
            metrics["kl"].append((kl.sum() / tokens).item())


def logs_target_distance(trainer) -> bool:
    """Whether the live distance is logged: la_tb and the exact objectives (not tb_token), sampled at temperature 1
    (the estimate needs the sampler's own log-probs), with logging on."""
    objective = trainer.objective in EXACT_OBJECTIVES or trainer.objective == "la_tb"
    return objective and trainer.temperature == 1.0 and trainer.args.logging_strategy != "no"


def log_target_distance(trainer, mode) -> None:
    """The live distance to the objective's fixed point (`target_distance.py`), once per log over every generation
    batch since the last one (rows in group order; the means over their groups): LA-TB's tilted one, or the exact
    p_base^alpha exp(alpha psi) / Z of tb_traj, la_tb_exact and token_balance (`logs_target_distance`). One solve
    per log instead of one per generation batch: the same means, a fraction of the cost at logging_steps > 1."""
    batches = trainer._distance_rows.pop(mode, [])
    if not batches:
        return
    exact = trainer.objective in EXACT_OBJECTIVES
    size = trainer.num_generations if mode == "train" else trainer.num_generations_eval
    _, _, _, s_sampler, s_base, length, psi = torch.cat(batches).double().unbind(1)
    values = target_distance_metrics(s_sampler, s_base, length, trainer.alpha, size, psi, length > 0, tilt=not exact)
    for name, value in values.items():
        trainer._metrics[mode][name].append(value)


@torch.no_grad()
def entropy_at_temperature(lm_head, hidden, num_completion_tokens, mask, temperature, chunk_size=1024):
    """Per-token entropy of softmax(lm_head(h) / T) at the completion positions, from the loss forward's hidden states
    (no extra backbone pass; one no-grad LM-head projection, `chunk_size` positions at a time)."""
    hidden = torch.cat(hidden, dim=0)[:, -num_completion_tokens - 1 : -1]
    flat = hidden.reshape(-1, hidden.size(-1)).to(lm_head.weight.device)
    entropies = []
    for start in range(0, flat.size(0), chunk_size):
        log_probs = torch.log_softmax(lm_head(flat[start : start + chunk_size]).float() / temperature, dim=-1)
        entropies.append(-(log_probs.exp() * log_probs).sum(-1))
    return torch.cat(entropies).view(mask.shape).to(mask.device) * mask


def write_completions_table(trainer) -> None:
    """GRPO's completions table (parquet file, console sample, wandb/trackio) with PowerFlow's columns."""
    import pandas as pd
    from transformers.utils import is_rich_available
    from trl.trainer.utils import print_prompt_completions_sample, strip_images_from_messages

    logs, step = trainer._logs, trainer.state.global_step
    stats = trainer._batch_rows.get(trainer._last_generation_mode)  # the rows of the batch `_logs` holds
    n = len(logs["prompt"])
    if stats is None or stats.size(0) != n:  # rows from another batch (e.g. eval): no TB values for them
        stats = torch.full((n, 3), float("nan"))
    columns = {"w": stats[:, 0].tolist(), "log_z": stats[:, 1].tolist(), "residual": stats[:, 2].tolist()}
    extra = {**logs["extra"], **columns}
    if is_rich_available():  # the console shows 2 decimals, as GRPO prints its rewards; the parquet file keeps all
        shown = {**logs["extra"], **{k: [round(v, 2) for v in values] for k, values in columns.items()}}
        print_prompt_completions_sample(
            logs["prompt"], logs["completion"], logs["rewards"], None, step, trainer.num_completions_to_print, shown
        )
    table = pd.DataFrame(
        {
            "step": [step] * n,
            "prompt": [strip_images_from_messages(m) for m in logs["prompt"]],
            "completion": [strip_images_from_messages(m) for m in logs["completion"]],
            **{name: list(values) for name, values in logs["rewards"].items()},
            **{name: list(values) for name, values in extra.items()},
        }
    )
    os.makedirs(os.path.join(trainer.args.output_dir, "completions"), exist_ok=True)
    table.to_parquet(os.path.join(trainer.args.output_dir, "completions", f"completions_{step:05d}.parquet"))
    report_to = trainer.args.report_to or []
    if trainer.log_unique_prompts:
        table = table[~table["prompt"].astype(str).duplicated()]
    if "wandb" in report_to:
        import wandb

        if wandb.run is not None:
            wandb.log({"completions": wandb.Table(dataframe=table)})
    if "trackio" in report_to:
        import trackio

        trackio.log({"completions": trackio.Table(dataframe=table)})
