"""hypothesis strategies shared by the property tests: tensors with the values that break
kernels (ties, signed zeros, denormals, huge values, large offsets), in odd shapes and layouts."""
import torch
from hypothesis import strategies as st

EDGE = [0.0, -0.0, 1.0, -1.0, 1e-40, -1e-40, 3e38, -3e38, 0.5, 2.0]


@st.composite
def float_tensors(draw, shape, dtype=torch.float32, edge=True, ties=True, allow_inf=False,
                  scales=(1e-3, 1.0, 1e3)):
    """A tensor of `shape`: random normals mixed with repeated values and edge values, drawn
    from a seed (fast for large shapes), optionally non-contiguous (a transposed or sliced view)."""
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    numel = 1
    for n in shape:
        numel *= n
    x = torch.randn(numel, generator=g, dtype=torch.float64) * draw(st.sampled_from(scales))
    if ties and numel and draw(st.booleans()):
        x = torch.round(x * 2) / 2  # many equal values
    if edge and numel:
        picks = draw(st.lists(st.sampled_from(EDGE + ([float("inf"), -float("inf")] if allow_inf else [])),
                              max_size=min(numel, 6)))
        where = torch.randint(0, numel, (len(picks),), generator=g)
        x[where] = torch.tensor(picks, dtype=torch.float64)
    x = x.to(dtype).reshape(shape)
    layout = draw(st.sampled_from(["contiguous", "transposed", "sliced"])) if len(shape) == 2 else "contiguous"
    if layout == "transposed":
        x = x.t().contiguous().t()
    elif layout == "sliced" and shape[1] > 0:
        wide = torch.zeros(shape[0], shape[1] + 3, dtype=dtype)
        wide[:, 1:shape[1] + 1] = x
        x = wide[:, 1:shape[1] + 1]
    return x


shapes_2d = st.tuples(st.integers(0, 9), st.integers(0, 70))
nonempty_shapes_2d = st.tuples(st.integers(1, 9), st.integers(1, 70))
