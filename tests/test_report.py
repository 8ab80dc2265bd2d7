import re
import shutil
import subprocess

import pytest

from selftune.reporting.document import write_report
from selftune.reporting.tables import summary_rows

RESULTS = {
    "order": ["base", "sft", "dpo"],
    "reference": "sft",
    "models": {
        name: {
            "instruction_following": {
                "prompt_strict": strict,
                "prompt_loose": strict + 0.1,
                "instruction_strict": strict,
                "instruction_loose": strict + 0.1,
                "by_type": {
                    "lowercase": {"n": 4, "strict": strict, "loose": strict},
                    "title": {"n": 3, "strict": strict / 2, "loose": strict},
                },
            },
            "pairs": {"reward_accuracy": {"all": acc}, "reward_margin": {"all": acc - 0.5}, "chosen_perplexity": 3.0},
            "mean_length_tokens": 40.0,
            "repetition_rate": 0.01,
            "peak_memory_gib": 0.7,
            **(
                {
                    "vs_base": {
                        "delta": strict - 0.2,
                        "ci95": [0.05, 0.4],
                        "wins": 30,
                        "losses": 5,
                        "prompts": 100,
                        "p_value": 0.0001,
                    }
                }
                if name != "base"
                else {}
            ),
        }
        for name, strict, acc in (("base", 0.2, 0.4), ("sft", 0.3, 0.5), ("dpo", 0.45, 0.8))
    },
}
ANSWERS = [
    {"prompt_id": f"eval-{i}", "model": m, "answer": f"answer {i} from {m} " * (i + 1)}
    for i in range(5)
    for m in ("base", "sft", "dpo")
]
HISTORY = {
    "sft": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "eval_loss": 1.7}],
    "dpo": [
        {"step": 1, "loss": 0.69, "rewards/accuracies": 0.5, "rewards/margins": 0.0},
        {"step": 2, "loss": 0.6, "rewards/accuracies": 0.7, "rewards/margins": 0.2},
    ],
}


def test_summary_rows_show_deltas_against_base():
    rows = {row[0]: row for row in summary_rows(RESULTS)}
    assert rows["base"][1] == "0.200"
    assert rows["dpo"][1] == "0.450 (+0.250)"
    assert rows["sft"][5] == "0.500 (+0.100)"


def test_the_terminal_summary_of_five_models_keeps_every_delta_whole_in_80_columns(monkeypatch):
    import copy

    from selftune.progress import console
    from selftune.reporting.terminal import print_results_table

    results = copy.deepcopy(RESULTS)
    for name in ("sft-r1", "dpo-r1", "sft-r2", "dpo-r2"):
        results["models"][name] = copy.deepcopy(RESULTS["models"]["dpo"])
        results["models"][name]["mean_length_tokens"] = 120.25
    results["order"] = ["base", "sft-r1", "dpo-r1", "sft-r2", "dpo-r2"]
    for name in ("sft", "dpo"):
        del results["models"][name]
    monkeypatch.setattr(console, "width", 80)
    with console.capture() as captured:
        print_results_table(results, "summary")
    text = captured.get()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    assert text.count("(+0.250)") == 4 * 4  # prompt and instruction, strict and loose, of each tuned model
    assert text.count("(+80.250)") == 4  # mean length, whole


def _many_models_with_benchmarks() -> dict:
    """Five models of a two-round run with IFEval and IFBench results, every figure distinct, one
    delta as wide as a perplexity's can be."""
    import copy

    results = {"order": ["base", "sft-r1", "dpo-r1", "sft-r2", "dpo-r2"], "reference": "sft-r1", "models": {}}
    for k, name in enumerate(results["order"]):
        metrics = copy.deepcopy(RESULTS["models"]["dpo" if k else "base"])
        metrics["pairs"]["chosen_perplexity"] = 3.0 + 111.111 * k * k
        metrics["mean_length_tokens"] = 100 + 7.25 * k
        benches = {}
        for b, bench in enumerate(("ifeval", "ifbench")):
            benches[bench] = {"prompt_strict": 0.1 + 0.0111 * k + 0.3 * b}
            if k:
                versus = {"delta": 0.0123 * k + b / 100, "ci95": [-0.0101 * k, 0.0301 * k + b / 10]}
                versus |= {"wins": 40 + k + 10 * b, "losses": 20 + k, "prompts": 541, "p_value": 0.0123 * k + b / 7}
                benches[bench]["vs_base"] = versus
                benches[bench]["vs_previous"] = versus
        metrics["benchmarks"] = benches
        results["models"][name] = metrics
    return results


def _figures(rows: list[list[str]]) -> set[str]:
    return {f for row in rows for cell in row[1:] for f in re.findall(r"[+-]?\d+(?:\.\d+)?(?:/\d+)?", cell)}


def test_the_terminal_tables_of_a_two_round_run_with_benchmarks_print_every_figure_whole_in_80_columns(monkeypatch):
    from selftune.progress import console
    from selftune.reporting.tables import noise_table, round_table, summary_table
    from selftune.reporting.terminal import print_results_table, print_table

    results = _many_models_with_benchmarks()
    monkeypatch.setattr(console, "width", 80)
    with console.capture() as captured:
        print_results_table(results, "summary")
        print_table(*round_table(results), "rounds", transpose=False)
    text = captured.get()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    tokens = set(re.findall(r"[+-]?\d+(?:\.\d+)?(?:/\d+)?", text))
    figures = set()
    for table in (summary_table(results), noise_table(results), round_table(results)):
        figures |= _figures(table[1])
    assert "+444.444" in figures  # the widest delta (dpo-r2's chosen perplexity) is among them
    assert figures - tokens == set()


@pytest.fixture
def report(tmp_path):
    files = write_report(
        tmp_path,
        title="test run",
        results=RESULTS,
        answers=ANSWERS,
        prompts={f"eval-{i}": f"prompt {i}" for i in range(5)},
        history_by_stage=HISTORY,
        lineage=[["round-1", "sft", "complete", "abc", "10s", "steps=2"]],
    )
    return tmp_path, files


def test_report_files_hold_the_table_and_every_referenced_image_exists(report):
    out, files = report
    md = files["md"].read_text()
    assert "| dpo | 0.450 (+0.250)" in md
    assert "| dpo | +0.250 | [+0.050, +0.400] | 30 / 5 | 0.0001 |" in md
    for reference in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (out / reference).is_file() and (out / reference).stat().st_size > 1000
    page = files["html"].read_text()
    assert page.count("<img") == 4 and len(re.findall(r"src=[\"']data:image/png;base64,", page)) == 4
    assert "<table>" in page
    assert "answer 0 from dpo" in page and "steps=2" in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (Debian package chromium); .ci/run installs it"
)
def test_html_report_renders_in_headless_chromium(report, tmp_path):
    out, files = report
    probe = tmp_path / "probe.html"
    probe.write_text(
        files["html"]
        .read_text()
        .replace(
            "</body>",
            """<script>
      window.addEventListener('load', () => {
        const images = Array.from(document.images);
        const shown = images.filter(i => i.complete && i.naturalWidth > 100 && i.getBoundingClientRect().height > 50);
        const rows = document.querySelectorAll('table tbody tr').length;
        const div = document.createElement('div'); div.id = 'probe';
        div.textContent = `images=${images.length} shown=${shown.length} rows=${rows}`;
        document.body.appendChild(div);
      });</script></body>""",
        )
    )
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r"images=(\d+) shown=(\d+) rows=(\d+)", result.stdout)
    assert found, result.stderr[-2000:]
    images, shown, rows = map(int, found.groups())
    assert images == 4 and shown == 4 and rows >= 3


def test_a_metric_no_model_has_is_left_out_of_the_table():
    from selftune.reporting.tables import summary_table

    header, _ = summary_table(RESULTS)
    assert "judge win rate" not in header and "IFEval-style prompt strict" in header
    judged = {**RESULTS, "models": {**RESULTS["models"], "dpo": {**RESULTS["models"]["dpo"], "judge_win_rate": 0.62}}}
    header, rows = summary_table(judged)
    column = header.index("judge win rate")
    assert [row[column] for row in rows] == ["-", "-", "0.620"]


def test_the_html_report_escapes_what_models_wrote_and_the_markdown_keeps_it(tmp_path):
    answers = [
        {"prompt_id": "eval-0", "model": m, "answer": "<script>alert(1)</script> & <b>bold</b>"}
        for m in ("base", "dpo")
    ]
    files = write_report(
        tmp_path,
        title="a <run>",
        results=RESULTS,
        answers=answers,
        prompts={"eval-0": "say <hi>"},
        history_by_stage={},
        lineage=[],
    )
    page = files["html"].read_text()
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;" in page
    assert "<title>a &lt;run&gt;</title>" in page and "say &lt;hi&gt;" in page
    md = files["md"].read_text()
    assert "<script>alert(1)</script> & <b>bold</b>" in md and md.startswith("# a <run>")
