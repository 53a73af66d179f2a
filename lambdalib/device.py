"""The machine a run computes on: device, kernels, precision, memory format, memory, checkpoint disks (local or
network), the batch work besides the model (crop, resize, flip, normalise), host reads without waiting.
Floor 1 (imports imagenette, files and paths only): cache and train build on it."""
from __future__ import annotations

import functools
import os
import platform
import queue
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from .files import RecordError, atomic_torch_save, atomic_write, describe_os_error, first_line
from .imagenette import MEAN, STD
from .paths import project_root

# the CUDA 12.6 build still has sm_50/60/70 kernels (Maxwell, P100, V100); 13.x starts at sm_75 (pytorch#190355)
CU126_INDEX = "https://download.pytorch.org/whl/cu126"
# autocast dtype of a resolved config's amp; CPU autocast honours bf16 and fp16 too
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ------------------------------------------------------------------------------ which device
def arch_supported(capability: tuple[int, int], arch_list: Sequence[str]) -> bool:
    """Whether a torch built for `arch_list` ('sm_75', 'sm_90a', 'compute_90'; empty: not known, so yes) has kernels
    for a GPU of `capability`: a cubin for sm_XY runs on X.Y up to X.9, PTX (compute_XY) on any GPU from X.Y on."""
    if not arch_list:
        return True
    major, cc = capability[0], capability[0] * 10 + capability[1]
    for kind, _, number in (arch.partition("_") for arch in arch_list):
        code = int(number.rstrip("af"))
        if code <= cc and (kind == "compute" or (kind == "sm" and code // 10 == major)):
            return True
    return False


def unsupported_gpu(index: int = 0) -> str | None:
    """Why this torch cannot compute on CUDA device `index`, naming the install that can; None when it can.
    (torch.cuda.is_available() says True for a P100 under a build for sm_75+: its first kernel then fails.)"""
    major, minor = torch.cuda.get_device_capability(index)
    arch = torch.cuda.get_arch_list()
    if arch_supported((major, minor), arch):
        return None
    vision = _version("torchvision")
    vision = f" torchvision=={vision.split('+')[0]}" if vision else ""
    return (f"{torch.cuda.get_device_name(index)} (compute capability {major}.{minor}) has no kernels in this torch "
            f"{torch.__version__} (built for {' '.join(arch)}); install a build whose arch list includes "
            f"sm_{major}{minor}, e.g. pip install torch=={torch.__version__.split('+')[0]}{vision} --index-url "
            f"{CU126_INDEX}, then check that torch.cuda.get_arch_list() lists sm_{major}{minor}")


def pick_device(choice: str, local_rank: int = 0, distributed: bool = False) -> torch.device:
    """The device of RunConfig.device: 'auto' takes the GPU when this torch can compute on it, else the CPU
    with a warning naming the install that would use the GPU; an explicit 'cuda' it cannot use is refused."""
    if choice == "auto":
        if torch.cuda.is_available():
            why = unsupported_gpu(local_rank)
            if why is None:
                return torch.device("cuda", local_rank)
            warnings.warn(f"{why}. Training on the CPU meanwhile.", stacklevel=2)
        elif Path("/proc/driver/nvidia/gpus").is_dir() or Path("/dev/nvidia0").exists():
            warnings.warn("an NVIDIA GPU is present but this torch cannot use it (torch.cuda.is_available() is "
                          "False): training on the CPU. Install a torch build for this GPU (see the README).",
                          stacklevel=2)
        return torch.device("cpu")
    device = torch.device(choice)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={choice!r}: this machine has no Apple GPU that torch can use (MPS); use "
                         "device='auto' or 'cpu'")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={choice!r} but CUDA is not available here; use device='auto' or 'cpu'")
        if distributed:
            device = torch.device("cuda", local_rank)
        why = unsupported_gpu(device.index or 0)
        if why:
            raise ValueError(f"device={choice!r}: {why}")
    return device


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_sum(self, values: list[float], device: torch.device) -> list[float]:
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        torch_dist.all_reduce(tensor)
        return tensor.tolist()

    def share(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (picklable objects)."""
        if not self.enabled:
            return value
        box = [value]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def decide(self, decide: Callable[[], Any]) -> Any:
        """decide() on rank 0, its answer (or its ValueError) handed to every rank: ranks on other nodes may
        see other disks, and all of them must skip, resume or refuse together."""
        try:
            answer = ("answer", decide()) if self.is_main else None
        except ValueError as err:
            answer = ("error", str(err))
        kind, value = self.share(answer)
        if kind == "error":
            raise ValueError(value)
        return value

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block before the others, which then find what it downloaded or built."""
        if self.enabled and not self.is_main:
            torch_dist.barrier()
        yield
        if self.enabled and self.is_main:
            torch_dist.barrier()


def setup_distributed(choice: str) -> Distributed:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; NCCL on a usable GPU, gloo on the CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    dist = Distributed(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not torch_dist.is_initialized():
        use_cuda = torch.cuda.is_available() and choice != "cpu" and unsupported_gpu(dist.local_rank) is None
        if use_cuda:
            torch.cuda.set_device(dist.local_rank)
        torch_dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist


def git_commit() -> str:
    try:
        root = project_root()
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        # outputs under results/ (regenerated, committed) do not make the code dirty
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":(exclude)results"], capture_output=True, text=True, timeout=10).stdout.strip()
        return (commit + ("-dirty" if dirty else "")) if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(device: torch.device, world_size: int) -> dict[str, Any]:
    """Where and with what a run was computed (summary.json's "environment")."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
        gpu = dict(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), capability=f"{major}.{minor}")
    else:
        name = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
        gpu = {}
    return dict(torch=torch.__version__, torchvision=_version("torchvision"), timm=_version("timm"),
                grad_cam=_version("grad-cam"), python=platform.python_version(), device=name, **gpu,
                world_size=world_size, git_commit=git_commit(), platform=platform.platform(), pid=os.getpid())


# ------------------------------------------------------------------------------ how it computes
def precision_note(amp: str, device: torch.device) -> str | None:
    """bf16 where the hardware has none (a CPU without AVX512-BF16/AMX, a GPU below compute capability 8.0 such as
    T4, P100, V100, where fp16, what amp='auto' picks, is faster) is emulated and slow: say so rather than let a run
    crawl unexplained (benchmarks/README.md)."""
    if amp != "bf16":
        return None
    if device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return ("amp=bf16 on a CPU without native bf16 (no AVX512-BF16/AMX): emulated, several times slower than "
                "fp32; amp='off' is faster here")
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 8:
        major, minor = torch.cuda.get_device_capability(device)
        return (f"amp=bf16 on {torch.cuda.get_device_name(device)} (compute capability {major}.{minor}, no native "
                f"bf16): emulated, slower than fp16; amp='fp16' (what amp='auto' picks here) is faster")
    return None


def channels_last(choice: str, device: torch.device) -> bool:
    """'auto': only on GPUs with tensor cores (compute capability 7.0+), where NHWC convs are faster."""
    if choice != "auto":
        return choice == "on"
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 7


def set_determinism(deterministic: bool, device: torch.device) -> dict:
    """deterministic: torch's deterministic algorithms where it has them; an op without one still runs (warn_only,
    see `noting_nondeterministic`). Otherwise cudnn.benchmark picks the fastest algorithm per shape."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, device.type == "cuda"
    return dict(deterministic=deterministic, cudnn_benchmark=torch.backends.cudnn.benchmark)


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()


def to_device(images: torch.Tensor, labels: torch.Tensor, device: torch.device,
              channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True)


@contextmanager
def noting_nondeterministic(found: set[str]):
    """Ops that ran without a deterministic implementation go into `found` (the record's nondeterministic_ops,
    empty for a bit-repeatable run) instead of onto the screen; other warnings pass."""
    with warnings.catch_warnings():
        warnings.filterwarnings("always", message=".*does not have a deterministic implementation")
        shown = warnings.showwarning

        def note(message, category, filename, lineno, file=None, line=None):
            text = str(message)
            if "does not have a deterministic implementation" in text:
                found.add(text.split(" does not have")[0].strip())
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = note
        yield


def compiles(wanted: bool, device: torch.device) -> bool:
    """torch.compile's Inductor GPU kernels (Triton) need compute capability 7.0+: below, the run stays eager."""
    if not wanted:
        return False
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 7:
        warnings.warn(f"compile=True: {torch.cuda.get_device_name(device)} (compute capability < 7.0) is not "
                      f"supported by torch.compile's Inductor; training without compiling", stacklevel=2)
        return False
    return True


def adam(params, **kwargs) -> torch.optim.Adam:
    """Fused Adam (one kernel, the same update rule) where this torch/device has it (not CPU before torch 2.4)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, **kwargs)


# ------------------------------------------------------------------------------ memory and disks
def available_memory() -> int:
    """Bytes of RAM available now (Linux: MemAvailable; elsewhere: total physical memory)."""
    with suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def free_memory(device: torch.device) -> int:
    """Bytes free on `device` now (CUDA: the driver's count; otherwise the host's available RAM)."""
    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else available_memory()


MOUNTS = "/proc/mounts"
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre")


def network_mount(path: str | Path) -> str | None:
    """The file system type when `path` lies on a network or FUSE mount (Colab's Google Drive is FUSE), where
    every write is an upload and a lost session can cut one off; None on a local disk or when unknown."""
    target = os.path.realpath(path)
    best, kind = "", None
    try:
        with open(MOUNTS) as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = fields[1].replace("\\040", " ")
                inside = target == point or target.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, kind = point, fields[2]
    except OSError:
        return None
    fuse = bool(kind) and kind.startswith("fuse") and not any(local in kind for local in ("overlay", "lxcfs"))
    return kind if fuse or kind in NETWORK_FILESYSTEMS else None


# ------------------------------------------------------------------------------ checkpoints on this machine's disks
def previous(last: Path) -> Path:
    return last.with_name(last.name + ".prev")


def keeping_previous(write: Callable[[Path], None], path: Path) -> None:
    """write(path); a last.pt it replaces is kept as last.pt.prev (a hard link where the disk has them, else a
    rename): a damaged new last.pt leaves a run one epoch behind, not at epoch 1."""
    if path.name == "last.pt" and path.exists():
        prev, tmp = previous(path), path.with_name(path.name + ".prev.tmp")
        try:
            tmp.unlink(missing_ok=True)
            os.link(path, tmp)
            os.replace(tmp, prev)
        except OSError:
            try:
                os.replace(path, prev)
            except OSError as err:
                raise RecordError(describe_os_error(err, prev)) from err
    write(path)


class Checkpoints:
    """Where last.pt and best.pt are written: the run folder; when that is on a network drive (an upload a lost
    Colab session can cut off), local disk, copied into the run folder at most every `every` s and at the end
    (`publish`)."""

    def __init__(self, run_dir: Path, every: float = 600.0) -> None:
        self.run_dir, self.every, self.remote = run_dir, every, network_mount(run_dir) is not None
        self.folder = Path(tempfile.gettempdir()) / "lambdalib-checkpoints" / run_dir.name if self.remote else run_dir
        self.copied, self.pending = time.monotonic(), []

    def save(self, name: str, state: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        keeping_previous(functools.partial(atomic_torch_save, state), self.folder / name)
        if self.remote and name not in self.pending:
            self.pending.append(name)  # best.pt before last.pt, as written

    def publish(self, force: bool = False) -> bool:
        """Copy what is pending into the run folder when due (or `force`); True when it holds the latest."""
        if self.pending and (force or time.monotonic() - self.copied >= self.every):
            self.copied = time.monotonic()
            try:
                for name in list(self.pending):
                    copy = functools.partial(shutil.copyfile, self.folder / name)
                    keeping_previous(functools.partial(atomic_write, write=copy), self.run_dir / name)
                    self.pending.remove(name)
            except RecordError as err:  # a drive that hiccups: training goes on, the copy is tried again
                if force:
                    raise
                warnings.warn(f"{err}; trying again in {self.every:.0f} s", stacklevel=2)
        return not self.pending

    def remove_last(self) -> None:
        for folder in {self.run_dir, self.folder}:
            for name in ("last.pt", "last.pt.prev"):
                (folder / name).unlink(missing_ok=True)
        if self.remote:
            shutil.rmtree(self.folder, ignore_errors=True)


def read_checkpoint(last: Path, keys: set[str], say: Callable[[str], None]) -> dict | None:
    """last.pt, else last.pt.prev (None when neither is there or readable). An unreadable one (a crash
    mid-copy, an upload cut off) is moved aside under a name that says so, and `say` tells why."""
    damaged = False
    for candidate in (last, previous(last)):
        if not candidate.exists():
            continue
        try:
            state = torch.load(candidate, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or not keys <= set(state):
                raise ValueError("not a lambdalib checkpoint")
            if candidate != last:
                say(f"resuming from {candidate.name}, the checkpoint before last.pt")
            return state
        except Exception as err:  # noqa: BLE001  (torch raises many kinds for a damaged file)
            aside = candidate.with_name(f"{candidate.name.replace('.pt', '')}.unreadable-"
                                        f"{datetime.now().strftime('%Y%m%d-%H%M%S')}.pt")
            os.replace(candidate, aside)
            say(f"warning: {candidate} is unreadable ({first_line(err)}); kept it as {aside.name}")
            damaged = True
    if damaged:
        say("no readable checkpoint: starting this run again from epoch 1")
    return None


# ------------------------------------------------------------------------------ the host waiting
class HostSyncs(TorchDispatchMode):
    """Counts the ops that make the host wait for a device: aten._local_scalar_dense (.item(), bool() of a tensor),
    counted on the CPU too so a CPU test can hold a loop to none, and blocking GPU-to-host copies (.cpu())."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        to_host = func is torch.ops.aten._to_copy.default and args[0].device.type != "cpu" \
            and str(kwargs.get("device", "")) == "cpu" and not kwargs.get("non_blocking", False)
        if func is torch.ops.aten._local_scalar_dense.default or to_host:
            self.count += 1
        return func(*args, **kwargs)


class Peek:
    """Device values the host reads without waiting: `post` starts a copy (CUDA: non-blocking into pinned
    memory, marked by an event; a post while the previous copy is in flight is dropped), `read` returns the
    latest posted values that have arrived (None before any). Elsewhere a copy arrives at once."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.host: torch.Tensor | None = None
        self.event = None
        self.value: list[float] | None = None

    def _arrived(self) -> bool:
        return self.host is not None and (self.event is None or self.event.query())

    def post(self, values: torch.Tensor) -> None:
        if self.host is not None and not self._arrived():
            return
        self.read()
        if self.host is None:
            self.host = torch.empty(values.shape, dtype=values.dtype, pin_memory=self.cuda)
        self.host.copy_(values.detach(), non_blocking=self.cuda)
        if self.cuda:
            self.event = torch.cuda.Event()
            self.event.record()

    def read(self) -> list[float] | None:
        if self._arrived():
            self.value = self.host.numpy().tolist()  # host memory: no dispatch, no wait
        return self.value


def prefetched(batches: Iterator, depth: int) -> Iterator:
    """`batches` made by a background thread up to `depth` ahead (torch's CPU kernels release the GIL, so the next
    crops overlap the device's compute). An error there is raised here; leaving early stops the thread."""
    ahead: queue.Queue = queue.Queue(maxsize=depth)
    stop, done = threading.Event(), object()

    def work() -> None:
        try:
            for item in batches:
                if stop.is_set():
                    return
                ahead.put(item)
            ahead.put(done)
        except BaseException as err:  # noqa: BLE001  (handed to the consumer, who raises it)
            ahead.put(err)

    thread = threading.Thread(target=work, name="lambdalib-prefetch", daemon=True)
    thread.start()
    try:
        while (item := ahead.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a put() so the thread sees the stop
            with suppress(queue.Empty):
                ahead.get(timeout=0.05)


# ------------------------------------------------------------------------------ batch work on the device
def resized_crop_batch(images: torch.Tensor, boxes: torch.Tensor, size: int,
                       flips: torch.Tensor | None = None) -> torch.Tensor:
    """The host path, one image at a time: box k = (top, left, h, w) of images[k] resized to size x size as PIL does
    (bilinear, antialiased), flipped where `flips`. CPU uint8 stays uint8 (torch's vectorised kernel)."""
    out = []
    cpu_uint8 = images.device.type == "cpu" and images.dtype == torch.uint8
    flip = [False] * len(boxes) if flips is None else flips.tolist()
    for k, (top, left, h, w) in enumerate(boxes.tolist()):
        region = images[k:k + 1, :, top:top + h, left:left + w]
        if not cpu_uint8 and not region.is_floating_point():
            region = region.float()
        crop = F.interpolate(region, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(crop.flip(-1) if flip[k] else crop)
    return torch.cat(out)


def _resize_weights(start: torch.Tensor, length: torch.Tensor, out: int, size: int) -> torch.Tensor:
    """(B, out, size): row i holds the weights torch's (and PIL's) antialiased bilinear resize gives the pixels of
    [start, start + length) of an axis of `size` pixels for output pixel i: a triangle of half-width max(1, scale)
    (scale = length / out) round the source position (i + 1/2) x scale, cut to the crop and normalised."""
    start, length = start.to(torch.float32)[:, None, None], length.to(torch.float32)[:, None, None]
    scale = length / out
    centre = (torch.arange(out, device=start.device, dtype=torch.float32)[None, :, None] + 0.5) * scale
    x = torch.arange(size, device=start.device, dtype=torch.float32)[None, None, :] - start + 0.5
    weights = (1 - ((x - centre) / scale.clamp(min=1.0)).abs()).clamp(min=0) * ((x > 0) & (x < length))
    return weights / weights.sum(-1, keepdim=True)


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, size: int,
                  flips: torch.Tensor | None = None) -> torch.Tensor:
    """The device path: `resized_crop_batch`'s crops (the same kernel) for a whole batch in two batched matrix
    products, rounded to 0-255 levels like the uint8 path: no per-image work, no host sync. float32 NCHW."""
    wy = _resize_weights(boxes[:, 0], boxes[:, 2], size, images.shape[-2])  # (B, size, H)
    wx = _resize_weights(boxes[:, 1], boxes[:, 3], size, images.shape[-1])  # (B, size, W)
    if flips is not None:
        wx = torch.where(flips[:, None, None], wx.flip(1), wx)
    crops = wy[:, None] @ images.to(torch.float32) @ wx.transpose(1, 2)[:, None]
    return crops.round_().clamp_(0, 255)


@functools.lru_cache(maxsize=16)
def _affine(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) (C, 1, 1) with (x / 255 - MEAN) / STD = x * scale + shift, made once per device, not per step."""
    std = torch.tensor(STD, dtype=torch.float64).view(-1, 1, 1)
    scale, shift = 1.0 / (255.0 * std), -torch.tensor(MEAN, dtype=torch.float64).view(-1, 1, 1) / std
    return scale.to(device, torch.float32), shift.to(device, torch.float32)


def normalise(images: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 (or 0-255 float) NCHW -> float32 (x / 255 - MEAN) / STD in `memory_format`: ToTensor + Normalize."""
    scale, shift = _affine(str(images.device))
    floats = images.to(torch.float32, memory_format=memory_format, copy=True)
    return floats.mul_(scale).add_(shift)
