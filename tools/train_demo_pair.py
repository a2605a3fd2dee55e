"""Train the bundled demo pair (a code target and a distilled one-layer draft) from scratch.

One command reproduces engine/demo_models/ on one GPU in about eight minutes:

    PYTHONUNBUFFERED=1 python3 tools/train_demo_pair.py --out engine/demo_models

The corpus is the Python source of the training machine (standard library and installed
site-packages), deduplicated by content hash and split into train and held-out by file.
`--smoke` runs every stage with a tiny corpus, tiny models and a few steps, on a CPU.
`--target-from FOLDER` keeps a trained target and its tokenizer (same corpus required) and
trains only a new draft against it, e.g. for a longer distillation:

    python3 tools/train_demo_pair.py --target-from engine/demo_models/target \
        --draft-seconds 330 --out /tmp/demo_models
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import site
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

EOS = "<|endoftext|>"
SAMPLE_PROMPT = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'
# Prompts in the style of HumanEval, for a greedy acceptance-length estimate during training.
CHECK_PROMPTS = (
    SAMPLE_PROMPT,
    'def is_palindrome(text: str) -> bool:\n    """Check if text reads the same backwards."""\n',
    "import os\n\n\ndef list_python_files(root):\n",
    'class Stack:\n    """A last-in first-out stack."""\n\n    def __init__(self):\n',
    "def parse_args(argv=None):\n    parser = argparse.ArgumentParser()\n",
    'def count_words(path):\n    """Count the words in a text file."""\n    counts = {}\n',
)


@dataclass(frozen=True)
class ModelShape:
    """The transformer shape of one model of the pair (Llama architecture, tied embeddings)."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int = 64


@dataclass(frozen=True)
class Settings:
    """Everything that decides what the run produces."""

    corpus_cap_bytes: int
    max_file_bytes: int
    heldout_percent: int
    tokenizer_sample_bytes: int
    vocab_size: int
    seq_len: int
    batch: int
    target: ModelShape
    draft: ModelShape
    target_seconds: float
    draft_seconds: float
    target_steps: int | None
    draft_steps: int | None
    target_lr: float
    draft_lr: float
    warmup_steps: int
    kl_weight: float
    eval_batches: int
    seed: int


FULL = Settings(
    corpus_cap_bytes=96 * 2**20,
    max_file_bytes=400_000,
    heldout_percent=1,
    tokenizer_sample_bytes=24 * 2**20,
    vocab_size=8192,
    seq_len=512,
    batch=128,
    target=ModelShape(hidden=384, layers=9, intermediate=1024, heads=6, kv_heads=2),
    # Two layers, not one: induction heads (copying names from the context) need two.
    draft=ModelShape(hidden=256, layers=2, intermediate=1024, heads=4, kv_heads=2),
    target_seconds=290.0,
    draft_seconds=140.0,
    target_steps=None,
    draft_steps=None,
    target_lr=2e-3,
    draft_lr=3e-3,
    warmup_steps=150,
    kl_weight=0.9,
    eval_batches=20,
    seed=1234,
)

SMOKE = Settings(
    corpus_cap_bytes=2 * 2**20,
    max_file_bytes=100_000,
    heldout_percent=5,
    tokenizer_sample_bytes=2**20,
    vocab_size=1024,
    seq_len=128,
    batch=8,
    target=ModelShape(hidden=64, layers=2, intermediate=128, heads=2, kv_heads=1, head_dim=32),
    draft=ModelShape(hidden=32, layers=1, intermediate=64, heads=1, kv_heads=1, head_dim=32),
    target_seconds=20.0,
    draft_seconds=10.0,
    target_steps=None,
    draft_steps=None,
    target_lr=3e-3,
    draft_lr=3e-3,
    warmup_steps=5,
    kl_weight=0.9,
    eval_batches=2,
    seed=1234,
)


@dataclass(frozen=True)
class Corpus:
    """Deduplicated Python source split by file into train and held-out texts."""

    roots: tuple[str, ...]
    train: tuple[str, ...]
    heldout: tuple[str, ...]
    files_seen: int
    duplicates: int
    sha256: str

    def summary(self) -> dict[str, object]:
        """The facts that go into training.json."""
        return {
            "roots": list(self.roots),
            "files_seen": self.files_seen,
            "duplicates_dropped": self.duplicates,
            "train_files": len(self.train),
            "heldout_files": len(self.heldout),
            "train_bytes": sum(len(t.encode()) for t in self.train),
            "heldout_bytes": sum(len(t.encode()) for t in self.heldout),
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class TrainLog:
    """What one training stage did."""

    steps: int
    tokens: int
    wall_s: float
    first_loss: float
    last_loss: float
    losses: tuple[tuple[int, float], ...]  # (step, loss) every few steps


def log(message: str) -> None:
    """Print one progress line with the time since start."""
    print(f"[{time.perf_counter() - _START:7.1f}s] {message}", flush=True)


_START = time.perf_counter()


def python_roots() -> tuple[str, ...]:
    """Folders holding the interpreter's Python source: stdlib and every site-packages."""
    paths = sysconfig.get_paths()
    candidates = [paths["stdlib"], paths["purelib"], paths["platlib"], *site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        candidates.append(site.getusersitepackages())
    roots: list[str] = []
    for candidate in candidates:
        resolved = str(Path(candidate).resolve())
        if Path(resolved).is_dir() and resolved not in roots:
            roots.append(resolved)
    return tuple(roots)


def iter_python_files(roots: tuple[str, ...]) -> Iterator[Path]:
    """Every .py file under the roots, in a stable order."""
    for root in roots:
        for folder, subfolders, files in os.walk(root):
            subfolders.sort()
            for name in sorted(files):
                if name.endswith(".py"):
                    yield Path(folder) / name


def collect_corpus(settings: Settings) -> Corpus:
    """Read, deduplicate, shuffle by hash, cap and split the Python source of this machine."""
    roots = python_roots()
    by_hash: dict[str, str] = {}
    seen = 0
    for path in iter_python_files(roots):
        seen += 1
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if not data.strip() or len(data) > settings.max_file_bytes:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        by_hash.setdefault(hashlib.sha256(data).hexdigest(), text)
    # Sorting by content hash is a shuffle that any machine with the same files repeats.
    train: list[str] = []
    heldout: list[str] = []
    total = 0
    corpus_hash = hashlib.sha256()
    for digest in sorted(by_hash):
        text = by_hash[digest]
        size = len(text.encode())
        if total + size > settings.corpus_cap_bytes:
            continue
        total += size
        corpus_hash.update(digest.encode())
        if int(digest[:8], 16) % 100 < settings.heldout_percent:
            heldout.append(text)
        else:
            train.append(text)
    return Corpus(
        roots=roots,
        train=tuple(train),
        heldout=tuple(heldout),
        files_seen=seen,
        duplicates=seen - len(by_hash),
        sha256=corpus_hash.hexdigest(),
    )


def train_tokenizer(corpus: Corpus, settings: Settings, folder: Path):
    """Train a byte-level BPE on part of the train split and save it for AutoTokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    def sample() -> Iterator[str]:
        used = 0
        for text in corpus.train:
            if used > settings.tokenizer_sample_bytes:
                return
            used += len(text)
            yield text

    tok = Tokenizer(models.BPE())
    # Each newline is a token of its own, so a prompt ending in "\n" ends on a boundary the
    # model saw in training (otherwise "\n" is merged with the next line's indentation).
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex("\n"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=settings.vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sample(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(folder)
    return fast


def encode(tokenizer, texts: tuple[str, ...]) -> torch.Tensor:
    """All texts as one stream of token ids, each file followed by the end-of-text token."""
    eos = tokenizer.eos_token_id
    backend = tokenizer.backend_tokenizer
    pieces: list[torch.Tensor] = []
    for start in range(0, len(texts), 2000):
        for encoding in backend.encode_batch(list(texts[start : start + 2000])):
            pieces.append(torch.tensor([*encoding.ids, eos], dtype=torch.int32))
    return torch.cat(pieces)


def build_model(shape: ModelShape, settings: Settings, tokenizer):
    """A freshly initialised Llama causal LM of the given shape."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=settings.vocab_size,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def parameter_count(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def random_batch(stream: torch.Tensor, settings: Settings, generator: torch.Generator):
    """`batch` random windows of seq_len+1 tokens from the stream, as inputs and labels."""
    starts = torch.randint(
        0,
        len(stream) - settings.seq_len - 1,
        (settings.batch,),
        generator=generator,
        device=stream.device,
    )
    index = starts[:, None] + torch.arange(settings.seq_len + 1, device=stream.device)
    window = stream[index].long()
    return window[:, :-1], window[:, 1:]


def lr_at(progress: float, step: int, peak: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def run_training(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    stream: torch.Tensor,
    settings: Settings,
    *,
    peak_lr: float,
    seconds: float,
    steps: int | None,
    name: str,
) -> TrainLog:
    """Train until the step count or the time budget is spent, the LR following progress."""
    device = stream.device
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=peak_lr,
        betas=(0.9, 0.95),
        weight_decay=0.1,
        fused=device.type == "cuda",
    )
    model.train()
    losses: list[tuple[int, float]] = []
    start = time.perf_counter()
    step = 0
    while True:
        elapsed = time.perf_counter() - start
        progress = step / steps if steps else elapsed / seconds
        if progress >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(progress, step, peak_lr, settings.warmup_steps)
        inputs, labels = random_batch(stream, settings, generator)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_fn(inputs, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 25 == 0:
            value = loss.item()
            losses.append((step, round(value, 4)))
            if step % 100 == 0:
                log(f"{name} step {step} loss {value:.4f} lr {optimizer.param_groups[0]['lr']:.2e}")
        step += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    model.eval()
    return TrainLog(
        steps=step,
        tokens=step * settings.batch * settings.seq_len,
        wall_s=round(wall, 1),
        first_loss=losses[0][1],
        last_loss=losses[-1][1],
        losses=tuple(losses),
    )


def lm_loss(model: torch.nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Next-token cross entropy of a model."""

    def loss(inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=inputs).logits.float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))

    return loss


def distill_loss(
    draft: torch.nn.Module, target: torch.nn.Module, kl_weight: float
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """KL(target || draft) on the target's soft distribution, mixed with cross entropy."""

    def loss(inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher = F.log_softmax(target(input_ids=inputs).logits.float(), dim=-1)
        student = F.log_softmax(draft(input_ids=inputs).logits.float(), dim=-1)
        vocab = student.shape[-1]
        kl = F.kl_div(
            student.reshape(-1, vocab),
            teacher.reshape(-1, vocab),
            log_target=True,
            reduction="batchmean",
        )
        ce = F.nll_loss(student.reshape(-1, vocab), labels.reshape(-1))
        return kl_weight * kl + (1 - kl_weight) * ce

    return loss


@torch.no_grad()
def evaluate(
    target: torch.nn.Module, draft: torch.nn.Module, stream: torch.Tensor, settings: Settings
) -> dict[str, float]:
    """Held-out loss of both models and how often the draft's top token is the target's."""
    generator = torch.Generator(device=stream.device).manual_seed(settings.seed + 1)
    totals = {"target": 0.0, "draft": 0.0, "agree": 0.0}
    for _ in range(settings.eval_batches):
        inputs, labels = random_batch(stream, settings, generator)
        with torch.autocast(stream.device.type, torch.bfloat16, stream.device.type == "cuda"):
            t_logits = target(input_ids=inputs).logits.float()
            d_logits = draft(input_ids=inputs).logits.float()
        vocab = t_logits.shape[-1]
        totals["target"] += F.cross_entropy(t_logits.reshape(-1, vocab), labels.reshape(-1)).item()
        totals["draft"] += F.cross_entropy(d_logits.reshape(-1, vocab), labels.reshape(-1)).item()
        agree = (t_logits.argmax(-1) == d_logits.argmax(-1)).float().mean().item()
        totals["agree"] += agree
    n = settings.eval_batches
    return {
        "heldout_loss_target": round(totals["target"] / n, 4),
        "heldout_loss_draft": round(totals["draft"] / n, 4),
        "heldout_top1_agreement": round(totals["agree"] / n, 4),
    }


@torch.no_grad()
def greedy_completion(model: torch.nn.Module, tokenizer, prompt: str, new_tokens: int) -> str:
    """A short greedy continuation of the prompt, for the log and the model card."""
    device = next(model.parameters()).device
    ids = torch.tensor([tokenizer.encode(prompt)], device=device)
    out = model.generate(
        ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id
    )
    return tokenizer.decode(out[0, ids.shape[1] :])


@torch.no_grad()
def greedy_acceptance_length(
    target: torch.nn.Module, draft: torch.nn.Module, tokenizer, k: int, new_tokens: int
) -> float:
    """Mean tokens committed per step of greedy speculative decoding over CHECK_PROMPTS.

    Under greedy decoding every accepted draft token is the target's own token, so the draft
    is always conditioned on the target's greedy text: one teacher-forced pass gives the
    exact accepted run at each position.
    """
    device = next(target.parameters()).device
    steps = committed = 0
    for prompt in CHECK_PROMPTS:
        ids = torch.tensor([tokenizer.encode(prompt)], device=device)
        text = target.generate(
            ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id
        )
        start = ids.shape[1]
        produced = text[0, start:]
        guesses = draft(input_ids=text).logits[0, start - 1 : -1].argmax(-1)
        hits = (guesses == produced).tolist()
        position = 0
        while position < len(hits):
            run = 0
            while run < k and position + run < len(hits) and hits[position + run]:
                run += 1
            position += run + 1
            committed += run + 1
            steps += 1
    return round(committed / steps, 3)


def save_model(model: torch.nn.Module, tokenizer, folder: Path) -> int:
    """Save bf16 safetensors in small shards beside the tokenizer; return the folder's bytes."""
    model.to(torch.bfloat16).save_pretrained(folder, max_shard_size="10MB")
    tokenizer.save_pretrained(folder)
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def main(argv: list[str] | None = None) -> int:
    """Run every stage and write the pair plus training.json under --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("engine/demo_models"))
    parser.add_argument("--smoke", action="store_true", help="tiny everything, CPU is fine")
    parser.add_argument("--target-steps", type=int, help="fixed steps instead of a time budget")
    parser.add_argument("--draft-steps", type=int, help="fixed steps instead of a time budget")
    parser.add_argument("--target-seconds", type=float)
    parser.add_argument("--draft-seconds", type=float)
    parser.add_argument(
        "--target-from",
        type=Path,
        help="keep this trained target (and its tokenizer); train only a new draft against it",
    )
    args = parser.parse_args(argv)
    settings = SMOKE if args.smoke else FULL
    overrides = {
        "target_steps": args.target_steps,
        "draft_steps": args.draft_steps,
        "target_seconds": args.target_seconds,
        "draft_seconds": args.draft_seconds,
    }
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(settings.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else None
    log(f"device {device} {gpu or platform.processor()} torch {torch.__version__}")

    stage_start = time.perf_counter()
    corpus = collect_corpus(settings)
    corpus_s = time.perf_counter() - stage_start
    log(f"corpus {json.dumps(corpus.summary())}")

    target_record = None
    if args.target_from is not None:
        target_record = json.loads((args.target_from / "training.json").read_text())
        if target_record["corpus"]["sha256"] != corpus.sha256:
            sys.exit(
                f"error: {args.target_from} was trained on corpus "
                f"{target_record['corpus']['sha256'][:12]}, this machine's is {corpus.sha256[:12]}"
            )
    target_dir, draft_dir = args.out / "target", args.out / "draft"
    for folder in (target_dir, draft_dir):
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            if old.is_file():
                old.unlink()
    stage_start = time.perf_counter()
    if args.target_from is None:
        tokenizer = train_tokenizer(corpus, settings, target_dir)
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.target_from)
    tokenizer_s = time.perf_counter() - stage_start
    log(f"tokenizer: {len(tokenizer)} tokens in {tokenizer_s:.1f}s")

    stage_start = time.perf_counter()
    train_stream = encode(tokenizer, corpus.train).to(device)
    heldout_stream = encode(tokenizer, corpus.heldout).to(device)
    encode_s = time.perf_counter() - stage_start
    log(f"tokens: train {len(train_stream)} heldout {len(heldout_stream)} in {encode_s:.1f}s")

    if target_record is None:
        target = build_model(settings.target, settings, tokenizer).to(device)
    else:
        from transformers import AutoModelForCausalLM

        target = AutoModelForCausalLM.from_pretrained(args.target_from, dtype=torch.float32)
        target = target.to(device)
    draft = build_model(settings.draft, settings, tokenizer).to(device)
    log(f"params: target {parameter_count(target)} draft {parameter_count(draft)}")

    if target_record is None:
        target_log = run_training(
            target,
            lm_loss(target),
            train_stream,
            settings,
            peak_lr=settings.target_lr,
            seconds=settings.target_seconds,
            steps=settings.target_steps,
            name="target",
        )
    else:  # the saved target, as shipped (bf16 weights): the draft learns what will run
        target_log = TrainLog(**target_record["target_training"])
        target.eval()
    log(f"target done: {target_log.steps} steps, loss {target_log.last_loss}")
    target.requires_grad_(False)
    draft_log = run_training(
        draft,
        distill_loss(draft, target, settings.kl_weight),
        train_stream,
        settings,
        peak_lr=settings.draft_lr,
        seconds=settings.draft_seconds,
        steps=settings.draft_steps,
        name="draft",
    )
    log(f"draft done: {draft_log.steps} steps, loss {draft_log.last_loss}")

    evaluation = evaluate(target, draft, heldout_stream, settings)
    evaluation["greedy_al_k6_check_prompts"] = greedy_acceptance_length(
        target, draft, tokenizer, k=6, new_tokens=128
    )
    log(f"eval {json.dumps(evaluation)}")
    sample = greedy_completion(target, tokenizer, SAMPLE_PROMPT, 48)
    log(f"sample (target, greedy):\n{SAMPLE_PROMPT}{sample}")

    sizes = {
        "target_bytes": save_model(target, tokenizer, target_dir),
        "draft_bytes": save_model(draft, tokenizer, draft_dir),
    }
    if target_record is not None:
        sizes["target_bytes"] = target_record["sizes"]["target_bytes"]
    record = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "smoke": args.smoke,
        "gpu": gpu,
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "transformers": __import__("transformers").__version__,
        "settings": asdict(settings),
        "corpus": corpus.summary(),
        "tokens": {"train": len(train_stream), "heldout": len(heldout_stream)},
        "parameters": {"target": parameter_count(target), "draft": parameter_count(draft)},
        "wall_s": {
            "corpus": round(corpus_s, 1),
            "tokenizer": round(tokenizer_s, 1),
            "encode": round(encode_s, 1),
            "target": target_log.wall_s if target_record is None else 0.0,
            "draft": draft_log.wall_s,
            "total": round(time.perf_counter() - _START, 1),
        },
        "target_training": asdict(target_log),
        "draft_training": asdict(draft_log),
        "evaluation": evaluation,
        "sample": {"prompt": SAMPLE_PROMPT, "completion": sample},
        "sizes": sizes,
    }
    if target_record is not None:
        record["target_from"] = {"folder": str(args.target_from), "record": target_record}
    for folder in (target_dir, draft_dir):
        (folder / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    if target_record is not None:  # the target's files stay byte for byte as they were
        for source in args.target_from.iterdir():
            if source.is_file():
                (target_dir / source.name).write_bytes(source.read_bytes())
                if source.name.startswith(("tokenizer", "special_tokens")):
                    (draft_dir / source.name).write_bytes(source.read_bytes())
    log(f"saved to {args.out}: {json.dumps(sizes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
