"""Exact discretisation of the rig's linear continuous-time models (numpy).

Runs once in build_rig, never per tick. scipy is not a runtime dependency of
attobus, so the matrix exponential is here: scaling and squaring with a
Taylor series (the rig's matrices are at most 4x4 with ||A T|| of a few; the
tests check it against scipy.linalg.expm to 1e-13).

- `expm(M)`: matrix exponential.
- `zoh_with_average(A, B, T)`: zero-order-hold step of x' = A x + B u over T
  (x_T = Phi x_0 + Gamma u) together with the exact average of x over the
  interval (x_avg = Pa x_0 + Ga u): the integrate-and-dump front end and the
  tick-averaged ground truth both need it.
- `van_loan(A, B, T)`: (Phi, Q) of x' = A x + B w with w white of unit
  two-sided PSD: x_{k+1} = Phi x_k + N(0, Q) exactly.
- `lyapunov_stationary(A, B)`: stationary covariance P (A P + P A^T + B B^T = 0)
  to start a noise process already stationary.
"""
import numpy as np


def _balance(M):
    """Diagonal d (powers of 2) with D^-1 M D balanced (Parlett & Reinsch):
    the PZT matrix mixes 1 and w0^2 = 3.6e10, whose norm would force ~20
    squarings (error ~2^20 eps) without it."""
    n = M.shape[0]
    d = np.ones(n)
    B = M.copy()
    for _ in range(100):
        done = True
        for i in range(n):
            c = np.sum(np.abs(B[:, i])) - abs(B[i, i])
            r = np.sum(np.abs(B[i, :])) - abs(B[i, i])
            if c == 0.0 or r == 0.0:
                continue
            f = 2.0 ** np.round(0.5 * np.log2(r / c))
            if f != 1.0 and (c * f + r / f) < 0.95 * (c + r):
                d[i] *= f
                B[:, i] *= f
                B[i, :] /= f
                done = False
        if done:
            break
    return d, B


def expm(M: np.ndarray) -> np.ndarray:
    """exp(M): balancing, then scaling and squaring of a Taylor series."""
    M = np.asarray(M, dtype=np.float64)
    n = M.shape[0]
    d, X = _balance(M)
    norm = np.max(np.sum(np.abs(X), axis=1)) if n else 0.0
    s = 0
    if norm > 0.25:
        s = int(np.ceil(np.log2(norm / 0.25)))
    X = X / (2.0 ** s)
    E = np.eye(n)
    term = np.eye(n)
    for k in range(1, 25):                 # ||X|| <= 1/4: 0.25^25/25! ~ 1e-40
        term = term @ X / k
        E = E + term
    for _ in range(s):
        E = E @ E
    return E * d[:, None] / d[None, :]


def zoh_with_average(A, B, T):
    """(Phi, Gamma, Pa, Ga) for x' = A x + B u, u held over [0, T].

    Augmented state [x, u, integral of x]: one exponential gives the end
    state and the integral, divided by T for the average.
    """
    A = np.atleast_2d(np.asarray(A, float))
    B = np.asarray(B, float).reshape(-1, 1)
    n = A.shape[0]
    M = np.zeros((2 * n + 1, 2 * n + 1))
    M[:n, :n] = A
    M[:n, n:n + 1] = B
    M[n + 1:, :n] = np.eye(n)              # d/dt integral = x
    E = expm(M * T)
    Phi = E[:n, :n]
    Gamma = E[:n, n]
    Pa = E[n + 1:, :n] / T
    Ga = E[n + 1:, n] / T
    return Phi, Gamma, Pa, Ga


def van_loan(A, B, T):
    """(Phi, Q): exact discrete transition and process-noise covariance."""
    A = np.atleast_2d(np.asarray(A, float))
    B = np.asarray(B, float).reshape(A.shape[0], -1)
    n = A.shape[0]
    M = np.zeros((2 * n, 2 * n))
    M[:n, :n] = -A
    M[:n, n:] = B @ B.T
    M[n:, n:] = A.T
    E = expm(M * T)
    Phi = E[n:, n:].T
    Q = Phi @ E[:n, n:]
    return Phi, 0.5 * (Q + Q.T)


def lyapunov_stationary(A, B):
    """P with A P + P A^T + B B^T = 0 (A stable), by vectorisation."""
    A = np.atleast_2d(np.asarray(A, float))
    B = np.asarray(B, float).reshape(A.shape[0], -1)
    n = A.shape[0]
    K = np.kron(np.eye(n), A) + np.kron(A, np.eye(n))
    P = np.linalg.solve(K, -(B @ B.T).reshape(-1)).reshape(n, n)
    return 0.5 * (P + P.T)


def chol2(Q):
    """Lower Cholesky factor (l11, l21, l22) of a 2x2 covariance (PSD-safe)."""
    q11, q21, q22 = float(Q[0, 0]), float(Q[1, 0]), float(Q[1, 1])
    l11 = np.sqrt(max(q11, 0.0))
    l21 = q21 / l11 if l11 > 0 else 0.0
    l22 = np.sqrt(max(q22 - l21 * l21, 0.0))
    return l11, l21, l22
