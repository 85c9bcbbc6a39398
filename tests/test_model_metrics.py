"""The tritoned_* metrics of the Python models on the real local Triton, scraped from its metrics port.

Known texts (short, over the tiny model's 64 tokens, invalid UTF-8; labels known from PyTorch) go through the
ensemble over HTTP and gRPC; the scrape before and after must differ by exactly the counts, sums and histogram
buckets they make. --no-model-metrics really removes the metrics, and every metric name (and label value) a
query of the Grafana dashboard uses is on a live scrape.
"""
from __future__ import annotations

import json
import re
import shutil
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from conftest import ROOT, Artifacts, make_image
from local_triton import LocalTriton
from reference import labels_of, pytorch_probabilities

MODEL_NAME = "support_intents"  # not the default: the `model` label must be the ensemble's name
MAX_LENGTH = 64  # the tiny models' max_position_embeddings
# Label names a Prometheus exposition must escape or carry as UTF-8.
ID2LABEL = {"0": "help", "1": 'order "status"', "2": "refund \\ возврат", "3": "спасибо 🙂 {thanks}"}
SHORT = ["where is my order", "помогите мне", "thank you very much", "the app crashes when I log in", "",
         "I want a refund"]
LONG = ["help " * 200, "where is my order " * 20, "спасибо за помощь " * 30]  # all beyond 64 tokens
TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)  # model_repository/tritoned_metrics.py
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)  # the same module
REASONS = ("invalid_utf8", "bad_pair", "tokenizer_error", "other")
DASHBOARD = ROOT / "deploy" / "grafana" / "tritoned-bert.json"

Samples = dict[tuple[str, frozenset], float]


def scrape(server: LocalTriton) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as response:
        return response.read().decode("utf-8")


def raw_samples(text: str) -> list:
    """Every sample of a scrape with its name as exported, parsed by the Prometheus client library's own parser (a
    malformed exposition, e.g. a badly escaped label value, fails here). Without the # TYPE lines, as the parser
    would otherwise rename a counter's samples to NAME_total."""
    untyped = "\n".join(line for line in text.splitlines() if not line.startswith("#")) + "\n"
    return [sample for family in text_string_to_metric_families(untyped) for sample in family.samples]


def samples(text: str) -> Samples:
    return {(sample.name, frozenset(sample.labels.items())): sample.value for sample in raw_samples(text)}


def settled(server: LocalTriton, timeout: float = 30) -> Samples:
    """The tritoned_* samples once they stop changing: the models send their updates every second from a thread."""
    def ours() -> Samples:
        return {key: v for key, v in samples(scrape(server)).items() if key[0].startswith("tritoned_")}

    last, deadline = ours(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(2.5)  # over two send intervals
        now = ours()
        if now == last:
            return now
        last = now
    raise AssertionError(f"tritoned_* metrics still changing after {timeout:.0f} s")


def value(found: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset({"model": MODEL_NAME, **labels}.items()))
    assert key in found, f"no sample {name}{labels} in the scrape"
    return found[key]


def le(bound: float) -> str:
    """A bucket bound as Triton (prometheus-cpp) prints it: 64 -> "64", 0.5 -> "0.5"."""
    return f"{bound:g}"


def text_input(module, texts: list[str | bytes]):
    data = np.array([[t.encode() if isinstance(t, str) else t] for t in texts], dtype=np.object_)
    inp = module.InferInput("text_input", list(data.shape), "BYTES")
    inp.set_data_from_numpy(data)
    return inp


def with_labels(artifacts: Artifacts, directory: Path) -> Artifacts:
    """The converted model with ID2LABEL as its class names (model, report and tokenizer linked, not changed)."""
    directory.mkdir()
    for name in ("model.onnx", "conversion_report.json", "tokenizer"):
        (directory / name).symlink_to(artifacts.out_dir / name)
    (directory / "id2label.json").write_text(json.dumps(ID2LABEL, ensure_ascii=False), encoding="utf-8")
    return Artifacts(hf_dir=artifacts.hf_dir, out_dir=directory)


@dataclass
class Served:
    artifacts: Artifacts
    server: LocalTriton
    repository: Path


@pytest.fixture(scope="module")
def served(tiny_artifacts, serve, tmp_path_factory) -> Served:
    build_dir = tmp_path_factory.mktemp("build-metrics")
    artifacts = with_labels(tiny_artifacts("bert"), build_dir / "artifacts")
    # Two tokenizer instances: two processes add to the same series.
    result = make_image(artifacts, build_dir, "--no-build", "--preprocessing-instances", "2", MODEL_NAME)
    assert result.returncode == 0, result.stderr
    repository = build_dir / MODEL_NAME / "context" / "model_repository"
    server = serve(repository, build_dir / "server.log", build_dir)  # the gateway turns latency summaries on
    return Served(artifacts, server, repository)


def hf_token_counts(hf_dir: Path, texts: list[str]) -> list[int]:
    """Tokens of each text without truncation, special tokens included, by the Hugging Face tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    return [len(tokenizer(text, truncation=False)["input_ids"]) for text in texts]


def cumulative(values: list[float], bounds: list[float]) -> dict[str, int]:
    counts = {le(bound): sum(1 for v in values if v <= bound) for bound in bounds}
    counts["+Inf"] = len(values)
    return counts


def send_known_traffic(served: Served) -> tuple[list[str], list[tuple[str, float]]]:
    """Good texts over HTTP and gRPC, singly and in batches, plus 4 texts in requests refused for invalid UTF-8 and
    one post_processing request refused for NaN logits. Returns the good texts and their (label, score) answers."""
    http = httpclient.InferenceServerClient(served.server.http_url)
    grpc = grpcclient.InferenceServerClient(served.server.grpc_url)
    texts, answers = [], []

    def answered(batch: list[str], result) -> None:
        texts.extend(batch)
        answers.extend(zip([v.decode() for v in result.as_numpy("label").reshape(-1)],
                           [float(s) for s in result.as_numpy("score").reshape(-1)]))

    for text in SHORT + LONG:
        answered([text], http.infer(MODEL_NAME, [text_input(httpclient, [text])]))
    batch = [LONG[0], SHORT[0], SHORT[4], LONG[2]]
    answered(batch, http.infer(MODEL_NAME, [text_input(httpclient, batch)]))
    batch = SHORT[1:4]
    answered(batch, grpc.infer(MODEL_NAME, [text_input(grpcclient, batch)]))

    with pytest.raises(InferenceServerException, match="not valid UTF-8"):  # 3 texts: the whole request is refused
        http.infer(MODEL_NAME, [text_input(httpclient, [SHORT[0], SHORT[1], b"\xff\xfe abc"])])
    with pytest.raises(InferenceServerException, match="not valid UTF-8"):
        grpc.infer(MODEL_NAME, [text_input(grpcclient, [b"bad \xc3\x28 utf-8"])])
    logits = httpclient.InferInput("logits", [1, len(ID2LABEL)], "FP32")
    logits.set_data_from_numpy(np.array([[0.1, np.nan, 0.3, 0.2]], dtype=np.float32))
    with pytest.raises(InferenceServerException, match="not finite"):
        http.infer("post_processing", [logits])
    return texts, answers


def test_counts_are_exact_after_known_texts(served: Served) -> None:
    before = settled(served.server)
    texts, answers = send_known_traffic(served)
    after = settled(served.server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Tokenization: every good text once; the long ones truncated; token counts as Hugging Face counts them.
    lengths = hf_token_counts(served.artifacts.hf_dir, texts)
    assert sum(length > MAX_LENGTH for length in lengths) == 5  # LONG singly, and 2 of them in a batch
    assert delta("tritoned_texts_tokenized_total") == len(texts) == 16
    assert delta("tritoned_texts_truncated_total") == sum(length > MAX_LENGTH for length in lengths)
    assert delta("tritoned_text_length_tokens_count") == len(texts)
    assert delta("tritoned_text_length_tokens_sum") == sum(lengths)
    for bound, count in cumulative(lengths, sorted({*TOKEN_BUCKETS, MAX_LENGTH})).items():
        assert delta("tritoned_text_length_tokens_bucket", le=bound) == count, (bound, lengths)

    # Rejections: the 4 texts of the two invalid UTF-8 requests; the NaN request is no client text's fault.
    assert {reason: delta("tritoned_texts_rejected_total", reason=reason) for reason in REASONS} == \
        {"invalid_utf8": 4, "bad_pair": 0, "tokenizer_error": 0, "other": 0}

    # Predictions: the labels PyTorch gives these texts, each with the score the server answered.
    expected = labels_of(pytorch_probabilities(served.artifacts.hf_dir, texts, MAX_LENGTH), ID2LABEL)
    assert [label for label, _ in answers] == expected
    assert len(set(expected)) >= 2, expected  # more than one label is counted
    for name in ID2LABEL.values():
        scores = [score for label, score in answers if label == name]
        assert delta("tritoned_label_predictions_total", label=name) == len(scores), name
        assert delta("tritoned_top_score_count", label=name) == len(scores), name
        assert delta("tritoned_top_score_sum", label=name) == pytest.approx(sum(scores), abs=1e-9), name
        for bound, count in cumulative(scores, list(SCORE_BUCKETS)).items():
            assert delta("tritoned_top_score_bucket", label=name, le=bound) == count, (name, bound, scores)


def test_health_probe_requests_are_not_counted(served: Served) -> None:
    """Requests with the parameter tritoned_probe=true (the gateway's end-to-end probe, every few seconds on every
    replica) leave every tritoned_* series as it was; tritoned_probe=false is ordinary traffic."""
    http = httpclient.InferenceServerClient(served.server.http_url)
    grpc = grpcclient.InferenceServerClient(served.server.grpc_url)
    before = settled(served.server)
    http.infer(MODEL_NAME, [text_input(httpclient, [LONG[0], SHORT[0]])], parameters={"tritoned_probe": True})
    grpc.infer(MODEL_NAME, [text_input(grpcclient, [SHORT[1]])], parameters={"tritoned_probe": True})
    with pytest.raises(InferenceServerException, match="not valid UTF-8"):
        http.infer(MODEL_NAME, [text_input(httpclient, [b"\xff"])], parameters={"tritoned_probe": True})
    assert settled(served.server) == before
    result = http.infer(MODEL_NAME, [text_input(httpclient, [SHORT[0]])], parameters={"tritoned_probe": False})
    after = settled(served.server)
    label = result.as_numpy("label").reshape(-1)[0].decode()
    assert value(after, "tritoned_texts_tokenized_total") - value(before, "tritoned_texts_tokenized_total") == 1
    assert value(after, "tritoned_label_predictions_total", label=label) - \
        value(before, "tritoned_label_predictions_total", label=label) == 1


def test_every_series_is_there_from_the_start_with_help_and_type(served: Served) -> None:
    """Bounded label sets, all at 0 before any traffic: every label name, every reason, one of everything else."""
    families = {family.name: family for family in text_string_to_metric_families(scrape(served.server))
                if family.name.startswith("tritoned_")}
    kinds = {"tritoned_texts_tokenized": "counter", "tritoned_texts_truncated": "counter",
             "tritoned_text_length_tokens": "histogram", "tritoned_texts_rejected": "counter",
             "tritoned_label_predictions": "counter", "tritoned_top_score": "histogram"}
    assert {name: family.type for name, family in families.items()} == kinds
    assert all(family.documentation for family in families.values())
    series = {name: {frozenset(s.labels.items()) - {("le", s.labels.get("le"))} for s in family.samples}
              for name, family in families.items()}
    assert series["tritoned_texts_rejected"] == {frozenset({("model", MODEL_NAME), ("reason", r)}) for r in REASONS}
    for name in ("tritoned_label_predictions", "tritoned_top_score"):
        assert series[name] == {frozenset({("model", MODEL_NAME), ("label", label)}) for label in ID2LABEL.values()}
    for name in ("tritoned_texts_tokenized", "tritoned_texts_truncated", "tritoned_text_length_tokens"):
        assert series[name] == {frozenset({("model", MODEL_NAME)})}


# --- the dashboard -----------------------------------------------------------------------------------------

GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "${model}": MODEL_NAME,
                     "$model": MODEL_NAME}


def dashboard_queries() -> list[str]:
    """Every PromQL expression in the dashboard: panel targets and query variables."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query.strip())
            assert match, f"query variable {variable['name']}: expected label_values(SELECTOR, LABEL), got {query}"
            queries.append(match.group(1))
    return queries


def selectors(query: str) -> list[tuple[str, list]]:
    """(metric name, label matchers) of every series selector of a query, from PromQL's parser."""
    import promql_parser

    for variable, replacement in GRAFANA_VARIABLES.items():
        query = query.replace(variable, replacement)
    assert "$" not in query, f"unknown Grafana variable in {query}"
    found: list[tuple[str, list]] = []
    promql_parser.walk(promql_parser.parse(query), lambda node: found.append(
        (node.name, list(node.matchers.matchers))) if isinstance(node, promql_parser.VectorSelector) else None)
    return found


def matches(labels: dict[str, str], matcher) -> bool:
    import promql_parser

    actual = labels.get(matcher.name, "")
    if matcher.op == promql_parser.MatchOp.Equal:
        return actual == matcher.value
    if matcher.op == promql_parser.MatchOp.NotEqual:
        return actual != matcher.value
    full = re.fullmatch(matcher.value, actual) is not None
    return full if matcher.op == promql_parser.MatchOp.Re else not full


def test_dashboard_has_the_panels_the_issue_asks_for() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    titles = " | ".join(panel["title"].lower() for panel in dashboard["panels"])
    for phrase in ("throughput", "p50", "p99", "queue time", "truncat", "label", "score"):
        assert phrase in titles, f"no panel about {phrase}: {titles}"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]


def test_every_dashboard_query_uses_series_the_server_exports(served: Served) -> None:
    """Each selector of each query (metric name and label matchers, with $model = this ensemble) matches at least
    one series of a live scrape taken after traffic, so no panel stays empty for a name the server lacks."""
    send_known_traffic(served)
    scraped = [(sample.name, sample.labels) for sample in raw_samples(scrape(served.server))]
    queries = dashboard_queries()
    assert len(queries) >= 10
    used = set()
    for query in queries:
        for name, matchers in selectors(query):
            assert name, f"a selector without a metric name in {query}"
            used.add(name)
            assert any(sample == name and all(matches(labels, m) for m in matchers) for sample, labels in scraped), \
                f"{query}: no exported series {name}{{{', '.join(str(m) for m in matchers)}}}"
    assert {"nv_inference_request_summary_us", "nv_inference_queue_duration_us", "tritoned_texts_truncated_total",
            "tritoned_label_predictions_total", "tritoned_top_score_bucket"} <= used, used


# --- tokens before truncation: the counting itself, for each kind of tokenizer, singles and pairs ------------

@pytest.fixture(scope="module")
def metrics_module(tmp_path_factory):
    """model_repository/tritoned_metrics.py, imported with Triton's own triton_python_backend_utils.py."""
    import importlib.util
    import sys

    import pytriton

    sys.path.insert(0, str(Path(pytriton.__file__).parent / "tritonserver" / "backends" / "python"))
    try:
        spec = importlib.util.spec_from_file_location("tritoned_metrics_under_test",
                                                      ROOT / "model_repository" / "tritoned_metrics.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    return module


@pytest.mark.parametrize("kind", ["bert", "roberta", "xlm_roberta"])
def test_tokens_before_truncation_of_texts_and_pairs(kind: str, metrics_module, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The counts of what text_preprocessing's own encoder (truncating_encoder.py) returns, texts and pairs, equal
    the whole (untruncated) tokenization's length; `truncated` is true exactly when that is over the max length."""
    from tiny_models import BUILDERS
    from tokenizers import Tokenizer

    monkeypatch.syspath_prepend(str(ROOT / "model_repository" / "text_preprocessing" / "1"))
    from truncating_encoder import TruncatingEncoder

    hf_dir = BUILDERS[kind](tmp_path / "hf")
    whole = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    whole.no_padding()
    whole.no_truncation()
    encoder = TruncatingEncoder(str(hf_dir / "tokenizer.json"), MAX_LENGTH)
    singles, pairs = whole.num_special_tokens_to_add(False), whole.num_special_tokens_to_add(True)
    long_a, long_b = "where is my order " * 30, "помогите мне пожалуйста " * 25
    cases = [("short", None), (long_a, None), ("", None), ("short", "pair"), (long_a, "pair"), ("short", long_b),
             (long_a, long_b), ("", long_b)]
    truncated = 0
    for text, pair in cases:
        encoding = encoder.encode([(text, pair) if pair is not None else text])[0]
        expected = len((whole.encode(text, pair) if pair is not None else whole.encode(text)).ids)
        got, cut = metrics_module.tokens_before_truncation(encoding, singles, pairs)
        assert (got, cut) == (expected, expected > MAX_LENGTH), (kind, text[:20], (pair or "")[:20])
        truncated += cut
    assert truncated == 5  # the cases really exercise truncation of singles and of each side of a pair


def test_reject_reasons_stay_bounded(metrics_module) -> None:
    assert metrics_module.reason_of("text_input[2] is not valid UTF-8 (invalid start byte at byte 0)") == "invalid_utf8"
    assert metrics_module.reason_of("text_pair[0] is not valid UTF-8 (invalid start byte at byte 3)") == "invalid_utf8"
    assert metrics_module.reason_of("text_pair has 2 rows but text_input has 3") == "bad_pair"
    assert metrics_module.reason_of("text_preprocessing: tokenizer failed: boom") == "tokenizer_error"
    assert metrics_module.reason_of("anything else\n{\"a\": 1}") == "other"


# --- the off switch ----------------------------------------------------------------------------------------

def test_no_model_metrics_creates_none(tiny_artifacts, serve, tmp_path_factory, served: Served) -> None:
    """make_triton_image.sh --no-model-metrics: the config says so, the server answers as before, and its scrape
    has Triton's nv_* metrics but no tritoned_* at all."""
    build_dir = tmp_path_factory.mktemp("build-no-metrics")
    artifacts = tiny_artifacts("bert")
    result = make_image(artifacts, build_dir, "--no-build", "--no-model-metrics")
    assert result.returncode == 0, result.stderr
    repository = build_dir / "ensemble_model" / "context" / "model_repository"
    for model in ("text_preprocessing", "post_processing"):
        config = (repository / model / "config.pbtxt").read_text(encoding="utf-8")
        assert re.search(r'key: "model_metrics" value: \{ string_value: "false" \}', config), config
        on = (served.repository / model / "config.pbtxt").read_text(encoding="utf-8")
        assert re.search(r'key: "model_metrics" value: \{ string_value: "true" \}', on), on
    server = serve(repository, build_dir / "server.log", build_dir)
    try:
        client = httpclient.InferenceServerClient(server.http_url)
        result = client.infer("ensemble_model", [text_input(httpclient, SHORT[:2])])
        expected = labels_of(pytorch_probabilities(artifacts.hf_dir, SHORT[:2], MAX_LENGTH), artifacts.labels())
        assert [v.decode() for v in result.as_numpy("label").reshape(-1)] == expected
        text = scrape(server)
        assert "nv_inference_count{" in text
        assert "tritoned_" not in text
    finally:
        server.stop()
    shutil.rmtree(build_dir, ignore_errors=True)
