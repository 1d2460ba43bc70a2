"""Float64 NumPy references for every loss, written with explicit loops straight from the formulas.

They share no code with lmstruct.losses, so a test comparing the two checks the implementation, not itself.
"""
import math

import numpy as np


def normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def ce_diag(m):
  """−(1/N) Σ_j log(exp(m_jj) / Σ_k exp(m_jk))."""
  n = m.shape[0]
  total = 0.0
  for j in range(n):
    row_max = max(m[j])
    log_z = row_max + math.log(sum(math.exp(m[j, k] - row_max) for k in range(n)))
    total += log_z - m[j, j]
  return total / n


def dot(u, v):
  return float(np.dot(u, v))


def sims(a, b, s=1.0):
  n = a.shape[0]
  return np.array([[s * dot(a[j], b[k]) for k in range(n)] for j in range(n)])


def clip(zv, zt, s):
  return 0.5 * (ce_diag(sims(zv, zt, s)) + ce_diag(sims(zt, zv, s)))


def inmodal(zv, zt, zva, zta, s):
  return 0.25 * (ce_diag(sims(zv, zt, s)) + ce_diag(sims(zt, zv, s)) + ce_diag(sims(zv, zva, s))
                 + ce_diag(sims(zt, zta, s)))


def separation(zv, zt, zvi, zti, zvia, ztia, s):
  n = zv.shape[0]
  ortho = sum(dot(zv[j], zvi[j]) ** 2 + dot(zt[j], zti[j]) ** 2 for j in range(n)) / n
  con = ce_diag(sims(zvi, zvia, s)) + ce_diag(sims(zti, ztia, s))
  g = lambda u, v: math.exp(-2.0 * float(np.sum((u - v) ** 2)))
  uni = math.log(sum(g(zvi[j], zvi[k]) + g(zti[j], zti[k]) for j in range(n) for k in range(n)) / n ** 2)
  return ortho + con + uni


def bridge(zv, zt, zva, t):
  n = zv.shape[0]
  ts = np.broadcast_to(np.asarray(t, np.float64), (n,))
  total = 0.0
  for j in range(n):
    m = ts[j] * zv[j] + (1 - ts[j]) * zt[j]
    m = m / np.linalg.norm(m)
    total += float(np.sum((zva[j] - m) ** 2))
  return total / n


def geometric(zv, zt, zva, zta):
  n = zv.shape[0]
  gc = sum((dot(zv[j], zt[k]) - dot(zv[k], zt[j])) ** 2 + (dot(zv[j], zv[k]) - dot(zt[j], zt[k])) ** 2
           for j in range(n) for k in range(n)) / n
  gca = sum((dot(zv[j], zv[k]) - dot(zva[j], zva[k])) ** 2 + (dot(zt[j], zt[k]) - dot(zta[j], zta[k])) ** 2
            for j in range(n) for k in range(n)) / n
  gca += sum((dot(zv[j], zt[j]) - dot(zva[j], zta[j])) ** 2 for j in range(n)) / n
  return gc + gca


def cyclip(zv, zt, inmodal_weight=0.25, crossmodal_weight=0.25):
  n = zv.shape[0]
  cross = sum((dot(zv[j], zt[k]) - dot(zv[k], zt[j])) ** 2 for j in range(n) for k in range(n)) / n
  inm = sum((dot(zv[j], zv[k]) - dot(zt[j], zt[k])) ** 2 for j in range(n) for k in range(n)) / n
  return crossmodal_weight * cross + inmodal_weight * inm


def sigmoid(zv, zt, s, b):
  n = zv.shape[0]
  total = 0.0
  for j in range(n):
    for k in range(n):
      y = 1.0 if j == k else -1.0
      x = y * (s * dot(zv[j], zt[k]) + b)
      total += -(-math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x)))
  return total / n


def alignment(zv, zt):
  n = zv.shape[0]
  return sum(1.0 / dot(zv[j], zt[j]) ** 2 for j in range(n)) / n


def gap_alignment(zv, zt):
  n = zv.shape[0]
  return sum(float(np.sum((zv[j] - zt[j]) ** 2)) for j in range(n)) / n
