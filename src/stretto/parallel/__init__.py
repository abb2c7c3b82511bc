"""One generation over several processes on torch.distributed: the process group and its collectives.

    torchrun --nproc-per-node 2 -m stretto.cli generate "a red circle" --parallel cfg
    torchrun --nproc-per-node 2 -m stretto.cli stream --frames 48 --parallel ulysses

    import stretto, stretto.parallel
    stretto.parallel.init()                                   # reads torchrun's RANK / WORLD_SIZE / MASTER_ADDR
    image = stretto.generate(model, ["a red circle"], parallel="cfg")      # or "ulysses": tokens split

gloo on the CPU, NCCL on CUDA; torch.distributed is the only transport. This room knows nothing about
models or pipelines: the pipelines decide what to split and call `AllGather` to join it; a model stretto calls
itself takes a `UlyssesShard` (token slice, all-to-all around attention, gather).
"""

from stretto.parallel.all_to_all import AllToAll
from stretto.parallel.gather import AllGather
from stretto.parallel.group import finish, init, rank, world_size
from stretto.parallel.ulysses import UlyssesShard, enable_ulysses

__all__ = ["AllGather", "AllToAll", "UlyssesShard", "enable_ulysses", "finish", "init", "rank", "world_size"]
