"""Terminal rendering of a RequestOutput (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .engine.outputs import RequestOutput


def render_output(o: RequestOutput, show_paths: bool = False, console: Console | None = None) -> None:
    """Paths (one line each, or in full), the summary, the answer and the per-phase counts."""
    console = console or Console()
    console.rule(Text(o.prompt[:100].replace("\n", " "), style="bold"))
    for p in o.paths:
        head = f"path {p.index}: {p.num_tokens} tokens, {p.finish_reason}" + (f", boxed {p.answer}" if p.answer else "")
        if show_paths:
            console.print(Panel(Text(p.text), title=head, title_align="left", border_style="dim"))
        else:
            line = " ".join(p.text.split())
            console.print(Text(f"  {head}: ", style="cyan") + Text(line[:110] + ("…" if len(line) > 110 else "")))
    if o.summary is not None:
        title = f"summary ({o.summary.num_tokens} tokens, {o.summary.finish_reason})"
        console.print(Panel(Text(o.summary.text), title=title, title_align="left", border_style="green"))
    if o.votes:
        console.print("votes: " + ", ".join(f"{k}: {v}" for k, v in sorted(o.votes.items(), key=lambda kv: -kv[1])))
    console.print(Text("answer: ", style="bold") + Text(str(o.answer), style="bold green" if o.answer else "red"))
    s = o.stats
    t = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for col in ("phase", "tokens run", "seconds"):
        t.add_column(col, justify="right")
    t.add_row("prompt prefill", f"{int(s['prefill_tokens'])}", f"{s['time_prefill']:.3f}")
    t.add_row("paths", f"{int(s['path_tokens'])}", f"{s['time_paths']:.3f}")
    if o.summary is not None:
        t.add_row("summary", f"{int(s['summary_tokens'] + s['reprefill_tokens'])}", f"{s['time_summary']:.3f}")
    t.add_row("total", f"{int(s['prefill_tokens'] + s['path_tokens'] + s['summary_tokens'] + s['reprefill_tokens'])}",
              f"{s['time_total']:.3f}")
    console.print(t)
