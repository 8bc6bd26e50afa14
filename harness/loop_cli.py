"""``loopdesk loop``: simulated traffic, training rounds and hot-swaps in a loop, with a report."""

from __future__ import annotations

import json
from pathlib import Path

import click

from loopdesk.cli_support import round_config_option


@click.command("loop")
@click.option("--rounds", type=click.IntRange(0), default=3, show_default=True,
              help="Training rounds after the round-0 measurement.")
@click.option("--customers-per-round", type=click.IntRange(1), default=100, show_default=True,
              help="Simulated customers per round (seen and held-out phrasings together).")
@click.option("--concurrency", type=click.IntRange(1), default=4, show_default=True,
              help="Chats running at the same time.")
@click.option("--experts/--no-experts", default=True, show_default=True,
              help="A simulated expert annotates the chats rated <= 3 after each round's traffic.")
@click.option("--audit-share", type=click.FloatRange(0, 1), default=0.25, show_default=True,
              help="The expert also audits this share of the chats rated 4-5 (0: only the low-rated queue).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the customers (per round: seed + 1000 r).")
@click.option("--held-out-share", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True,
              help="Share of customers opening with held-out phrasings (measured in a sandbox, never trained on).")
@click.option("--out-of-scope-share", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Share of customers asking a question no help article answers (an honest decline answers it).")
@click.option("--ask-person-share", type=click.FloatRange(0, 1), default=0.25, show_default=True,
              help="Share of customers who ask for a person when the bot fails them (a simulated agent answers "
                   "them on the bot; in the sandbox nobody is available).")
@click.option("--agent-delay", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Seconds the simulated agent takes to answer a chat it claimed.")
@round_config_option
@click.option("--round-timeout", type=click.FloatRange(1), default=3600.0, show_default=True,
              help="Seconds one training round may take.")
@click.option("--method", "methods", multiple=True, type=click.Choice(["ppo", "sft", "kto", "none"]),
              default=("ppo",), show_default=True,
              help="Policy update of each round (repeat to compare: each method runs its own loop on its own "
                   "data under <data_dir>/loop/<method>, same customers, and one comparison report is written).")
@click.option("--oracle/--no-oracle", default=True, show_default=True,
              help="Also measure the oracle (canonical replies) on round 0's customers (and on the evaluation panel).")
@click.option("--eval-customers", type=click.IntRange(0), default=150, show_default=True,
              help="Customers of the fixed evaluation panel: the same ones every round, played against the served "
                   "version in a sandbox, never trained on (0: none). Round-on-round gains on it are paired.")
@click.option("--combine", "combine", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Run nothing: write one comparison from these report.json files (single- or multi-method, "
                   "e.g. methods run as separate commands on the same commit).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("docs/loop-report"),
              show_default=True, help="Where report.md, report.json and the plots go (the worker's log: <data_dir>/loop/worker.log).")
def loop(rounds: int, customers_per_round: int, concurrency: int, experts: bool, audit_share: float, seed: int,
         held_out_share: float, out_of_scope_share: float, ask_person_share: float, agent_delay: float,
         round_config: Path | None, round_timeout: float, methods: tuple[str, ...], oracle: bool,
         eval_customers: int, combine: tuple[Path, ...], out: Path) -> None:
    """Run the closed loop on this data directory: round 0 measures the active adapter; each later
    round trains (a 'loopdesk worker' subprocess runs the queued round: reward model, PPO, gate,
    release as active), waits for the bot to serve the new version, and measures again.

    \b
        loopdesk loop --rounds 3 --customers-per-round 100 --out docs/loop-report
        loopdesk loop --method ppo --method sft --method kto --method none --out docs/loop-report
    """
    from feedback_store.server import stop_embedded_redis
    from harness.comparison import write_comparison
    from harness.loop import LoopConfig, run_loop
    from harness.processes import LoopError
    from harness.report import write_report
    from loopdesk.cli_support import round_overrides_or_exit, settings_or_exit

    if combine:
        for path in write_comparison(combined_reports(combine), out):
            click.echo(f"wrote {path}")
        return
    methods = tuple(dict.fromkeys(methods))
    overrides = round_overrides_or_exit(round_config)
    try:
        configs = {m: LoopConfig(rounds=rounds, customers_per_round=customers_per_round, concurrency=concurrency,
                                 experts=experts, audit_share=audit_share, held_out_share=held_out_share,
                                 out_of_scope_share=out_of_scope_share, seed=seed,
                                 round_timeout_s=round_timeout, round_config=overrides, method=m,
                                 oracle=oracle and i == 0, eval_customers=eval_customers,
                                 ask_person_share=ask_person_share, agent_delay_s=agent_delay)
                   for i, m in enumerate(methods)}
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    settings = settings_or_exit()
    echo = lambda line: click.echo(line, err=True)  # noqa: E731
    reports = {}
    for method, config in configs.items():
        own = settings if len(methods) == 1 else method_settings(settings, method)
        try:
            reports[method] = run_loop(own, config, own.data_dir / "loop", echo=echo)
        except LoopError as exc:
            raise click.ClickException(f"{method}: {exc}") from None
        finally:
            if own is not settings and not settings.redis_url:  # this method's own embedded Redis
                stop_embedded_redis(own.data_dir)
    written = (write_report(reports[methods[0]], out) if len(methods) == 1
               else write_comparison(reports, out))
    for path in written:
        click.echo(f"wrote {path}")


def method_settings(settings, method: str):
    """One compared method's own data: a data dir under ``<data_dir>/loop/<method>`` (its own embedded
    Redis), or its own key prefix on an external Redis; on the base model ``settings`` chose."""
    base = settings.base_model_ref
    if Path(base).exists():
        base = str(Path(base).resolve())
    changes = {"data_dir": settings.data_dir / "loop" / method, "base_model": base}
    if settings.redis_url:
        changes["key_prefix"] = f"{settings.key_prefix}-{method}"
    return settings.replace(**changes)


def combined_reports(paths: tuple[Path, ...]) -> dict:
    """Method → loop report from report.json files; a method met twice, a file that is neither
    format, or reports served at different temperatures are a usage error."""
    reports: dict = {}
    for path in paths:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            found = data["methods"] if "methods" in data else {data["config"].get("method", "ppo"): data}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise click.UsageError(f"{path} is not a loop report.json ({exc})") from None
        for method, report in found.items():
            if method in reports:
                raise click.UsageError(f"method {method!r} appears in more than one report")
            reports[method] = report
    temperatures = {report.get("temperature") for report in reports.values()}
    if len(temperatures) > 1:
        raise click.UsageError(f"the reports were served at different temperatures {sorted(map(str, temperatures))}: "
                               "their CSAT is not comparable")
    return reports
