"""MTCNN's three-stage cascade (Zhang et al., 2016) on facenet-pytorch's networks and weights.

facenet-pytorch's own driver resizes every candidate box with its own call to torch's "area" interpolation
(about 50 calls a photo) and pools with torch's max-pooling kernel, which is slow on these few-channel maps.
Here all the boxes of a stage are read off one integral image of the input at once (a box sum is four
lookups), and the pooling is the maximum of strided views; both give the same numbers bit for bit, so the
faces, scores and landmarks are facenet-pytorch's (``tests/test_detect.py``; every FER2013 validation face and
CK+ neutral/peak crop compared equal), in 0.77-0.95 of its time on 640 px to 2048 px photos on 2 CPU cores
(``bench/bench_detect.py``, three runs; 0.78-1.01 on 48 px and 128 px face crops).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

_FACTOR = 0.709  # the pyramid's scale step, MTCNN's and facenet-pytorch's default
_STRIDE, _CELL = 2, 12  # P-Net's output stride and receptive field


def _windows(start: np.ndarray, length: np.ndarray, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """adaptive_avg_pool's windows: output i of ``n_out`` averages [floor(i*L/n), ceil((i+1)*L/n))."""
    i = np.arange(n_out)
    lo = (i * length[:, None]) // n_out
    hi = -((-(i + 1) * length[:, None]) // n_out)
    return start[:, None] + lo, start[:, None] + hi


class IntegralImage:
    """Area-resized crops of a batch of same-size images, read off their summed-area tables.

    Pixel values are integers, so the float64 sums are exact, and so is their float32 cast for windows
    under 2^24 / 255 pixels (65,000: more than any window MTCNN asks for); the means are then rounded as
    ``adaptive_avg_pool2d`` rounds them, ``sum / kh / kw`` in float32. The tables stay on the CPU (OpenCV
    builds them); the crops go to ``device``.
    """

    def __init__(self, images: np.ndarray, device: torch.device) -> None:
        """``images``: (B, H, W, 3) uint8."""
        tables = np.stack([cv2.integral(im, sdepth=cv2.CV_64F) for im in images])  # (B, H+1, W+1, 3)
        self.height, self.width = images.shape[1:3]
        self.flat = torch.from_numpy(tables).view(-1, 3)
        self.device = device

    def crops(
        self, which: np.ndarray, y0: np.ndarray, y1: np.ndarray, x0: np.ndarray, x1: np.ndarray, size: int
    ) -> torch.Tensor:
        """Rows [y0, y1) x columns [x0, x1) of image ``which``, one crop per entry, each area-resized to
        ``size`` x ``size``: (N, 3, size, size)."""
        r0, r1 = _windows(y0, y1 - y0, size)
        c0, c1 = _windows(x0, x1 - x0, size)
        stride = (self.height + 1) * (self.width + 1)

        def at(r: np.ndarray, c: np.ndarray) -> torch.Tensor:
            idx = which[:, None, None] * stride + r[:, :, None] * (self.width + 1) + c[:, None, :]
            return self.flat[torch.from_numpy(idx)]  # (N, size, size, 3)

        total = (at(r1, c1) - at(r0, c1) - at(r1, c0) + at(r0, c0)).float()
        kh = torch.from_numpy((r1 - r0).astype(np.float32))[:, :, None, None]
        kw = torch.from_numpy((c1 - c0).astype(np.float32))[:, None, :, None]
        return (total / kh / kw).to(self.device).permute(0, 3, 1, 2).contiguous()


class CeilMaxPool(nn.Module):
    """``nn.MaxPool2d(k, s, ceil_mode=True)`` as the maximum of k*k strided views: the same values, 3-6x
    faster than torch's pooling kernel on MTCNN's few-channel maps on a CPU."""

    def __init__(self, kernel: int, stride: int) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel, self.stride
        h, w = x.shape[2:]
        oh, ow = -(-(h - k) // s) + 1, -(-(w - k) // s) + 1
        pad_h, pad_w = (oh - 1) * s + k - h, (ow - 1) * s + k - w
        if pad_h > 0 or pad_w > 0:  # windows hanging over the edge (ceil mode) see only real pixels
            x = F.pad(x, (0, max(pad_w, 0), 0, max(pad_h, 0)), value=float("-inf"))
        out = None
        for i in range(k):
            for j in range(k):
                view = x[:, :, i : i + s * (oh - 1) + 1 : s, j : j + s * (ow - 1) + 1 : s]
                out = view if out is None else torch.maximum(out, view)
        return out


def _with_fast_pooling(net: nn.Module) -> nn.Module:
    for name, child in list(net.named_children()):
        if isinstance(child, nn.MaxPool2d):
            assert child.ceil_mode and child.padding == 0 and child.dilation == 1
            setattr(net, name, CeilMaxPool(child.kernel_size, child.stride))
    return net.eval()


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes (N, >=4) grown to squares about their centres, side the longer of width and height."""
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    side = torch.maximum(w, h)
    boxes[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    boxes[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    boxes[:, 2:4] = boxes[:, :2] + side[:, None]
    return boxes


def _regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """R-Net's and O-Net's box regression: offsets in units of the (inclusive) box size."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    size = torch.stack([w, h, w, h], dim=1)
    boxes[:, :4] = boxes[:, :4] + offsets[:, :4] * size
    return boxes


def nms_min(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS where overlap is intersection over the smaller box (MTCNN's last stage)."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    # stable: numpy's default sort breaks score ties one way for 16 boxes or fewer and another past that, so an
    # image's faces depended on how many other images shared its batch (boxes of bit-identical scores do occur)
    order = np.argsort(scores, kind="stable")
    keep: list[int] = []
    while order.size > 0:
        i, rest = order[-1], order[:-1]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        overlap = w * h / np.minimum(area[i], area[rest])
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


class Cascade:
    """P-Net over an image pyramid, R-Net and O-Net over the surviving boxes, for same-size images."""

    def __init__(
        self,
        device: str | torch.device = "cpu",
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
    ) -> None:
        from facenet_pytorch.models.mtcnn import ONet, PNet, RNet  # weights from the wheel

        self.device = torch.device(device)
        if min_face_size < 1:
            raise ValueError(f"min_face_size must be at least 1 pixel, got {min_face_size}")
        self.min_face_size = min_face_size
        self.thresholds = thresholds
        self.pnet, self.rnet, self.onet = (_with_fast_pooling(net().to(self.device)) for net in (PNet, RNet, ONet))

    def scales(self, h: int, w: int, min_face_size: int | None = None) -> list[float]:
        """The pyramid: the smallest face maps to P-Net's 12 px cell, then steps of 0.709 down to 12 px."""
        scale = 12.0 / (min_face_size or self.min_face_size)
        shortest = min(h, w) * scale
        out = []
        while shortest >= 12:
            out.append(scale)
            scale *= _FACTOR
            shortest *= _FACTOR
        return out

    @staticmethod
    def _normalise(x: torch.Tensor) -> torch.Tensor:
        return (x - 127.5) * 0.0078125

    def _proposals(self, batch: torch.Tensor, scales: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1: P-Net over the pyramid ``scales`` of ``batch`` (B, 3, H, W) float: squared boxes (N, 5: x1 y1
        x2 y2 score) and their image index."""
        h, w = batch.shape[2:]
        boxes, owners = [], []
        for scale in scales:
            data = self._normalise(F.interpolate(batch, size=(int(h * scale + 1), int(w * scale + 1)), mode="area"))
            offsets, probs = self.pnet(data)
            hit = probs[:, 1] >= self.thresholds[0]  # (B, h', w')
            where = hit.nonzero()
            xy = where[:, 1:].to(offsets.dtype).flip(1)
            top_left = ((_STRIDE * xy + 1) / scale).floor()
            bottom_right = ((_STRIDE * xy + _CELL) / scale).floor()
            found = torch.cat(
                [top_left, bottom_right, probs[:, 1][hit][:, None], offsets.permute(1, 0, 2, 3)[:, hit].T], 1
            )
            keep = batched_nms(found[:, :4], found[:, 4], where[:, 0], 0.5)
            boxes.append(found[keep])
            owners.append(where[keep, 0])
        found, owner = torch.cat(boxes), torch.cat(owners)
        keep = batched_nms(found[:, :4], found[:, 4], owner, 0.7)
        found, owner = found[keep], owner[keep]
        w_, h_ = found[:, 2] - found[:, 0], found[:, 3] - found[:, 1]
        size = torch.stack([w_, h_, w_, h_], dim=1)
        refined = torch.cat([found[:, :4] + found[:, 5:9] * size, found[:, 4:5]], dim=1)
        return _square(refined), owner

    def _crops(
        self, pixels: IntegralImage, boxes: torch.Tensor, owner: torch.Tensor, size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each box's pixels (clipped to the image) resized to ``size``; boxes wholly outside are dropped:
        (N', 3, size, size) normalised, and the kept rows' indices."""
        corners = boxes[:, :4].trunc().long()
        x0 = corners[:, 0].clamp(min=1) - 1
        y0 = corners[:, 1].clamp(min=1) - 1
        x1 = corners[:, 2].clamp(max=pixels.width)
        y1 = corners[:, 3].clamp(max=pixels.height)
        inside = ((y1 > y0) & (x1 > x0)).nonzero()[:, 0]
        cpu = [v[inside].cpu().numpy() for v in (owner, y0, y1, x0, x1)]
        return self._normalise(pixels.crops(*cpu, size)), inside

    def _refine(
        self, pixels: IntegralImage, boxes: torch.Tensor, owner: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 2: R-Net rescores and regresses the proposals."""
        data, inside = self._crops(pixels, boxes, owner, 24)
        boxes, owner = boxes[inside], owner[inside]
        if not len(boxes):  # every box lay wholly outside the image
            return boxes[:, :5], owner
        offsets, probs = self.rnet(data)
        score = probs[:, 1]
        ok = score > self.thresholds[1]
        boxes = torch.cat([boxes[ok, :4], score[ok][:, None]], dim=1)
        owner, offsets = owner[ok], offsets[ok]
        keep = batched_nms(boxes[:, :4], boxes[:, 4], owner, 0.7)
        return _square(_regress(boxes[keep], offsets[keep])), owner[keep]

    def _output(
        self, pixels: IntegralImage, boxes: torch.Tensor, owner: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage 3: O-Net's final boxes, scores and five landmarks (N, 5, 2)."""
        data, inside = self._crops(pixels, boxes, owner, 48)
        boxes, owner = boxes[inside], owner[inside]
        if not len(boxes):
            return boxes[:, :5], owner, torch.zeros(0, 5, 2, device=self.device)
        offsets, marks, probs = self.onet(data)
        score = probs[:, 1]
        ok = score > self.thresholds[2]
        boxes = torch.cat([boxes[ok, :4], score[ok][:, None]], dim=1)
        owner, offsets, marks = owner[ok], offsets[ok], marks[ok]
        w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        points = torch.stack([w * marks[:, :5] + boxes[:, 0:1] - 1, h * marks[:, 5:10] + boxes[:, 1:2] - 1], dim=2)
        return _regress(boxes, offsets), owner, points

    @torch.inference_mode()
    def __call__(self, images: np.ndarray, min_face_size: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """``images`` (B, H, W, 3) uint8 RGB, one size -> per image (boxes (N, 5): x1 y1 x2 y2 score, landmarks
        (N, 5, 2)), in the order the last NMS keeps them. ``min_face_size``: this call's smallest face (default the
        cascade's)."""
        images = np.ascontiguousarray(images)
        scales = self.scales(*images.shape[1:3], min_face_size)
        if not scales:  # smaller than the smallest face: nothing to look at
            return [(np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)) for _ in images]
        batch = torch.as_tensor(images, device=self.device).permute(0, 3, 1, 2).float()
        pixels = IntegralImage(images, self.device)
        boxes, owner = self._proposals(batch, scales)
        points = torch.zeros(0, 5, 2, device=self.device)
        if len(boxes):
            boxes, owner = self._refine(pixels, boxes, owner)
        if len(boxes):
            boxes, owner, points = self._output(pixels, boxes, owner)
        if len(boxes):
            # the last NMS runs per image on boxes shifted apart by image index, as facenet-pytorch does
            shifted = boxes[:, :4] + (owner.to(boxes) * (boxes[:, :4].max() + 1))[:, None]
            keep = torch.as_tensor(nms_min(shifted.cpu().numpy(), boxes[:, 4].cpu().numpy(), 0.7))
            boxes, owner, points = boxes[keep], owner[keep], points[keep]
        boxes_np, points_np, owner_np = boxes.cpu().numpy(), points.cpu().numpy(), owner.cpu().numpy()
        return [(boxes_np[owner_np == i], points_np[owner_np == i]) for i in range(len(images))]
