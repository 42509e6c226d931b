"""The SPEC §3 invariants, as queries. The tests run them after every scenario.

For every (customer, reward): wallet balance = sum of signed transaction amounts
= sum of `remaining` over the customer's live lines; no `remaining` exceeds its
line's `amount`; every transaction is undone at most once (also a unique
constraint) and only by a REVERSAL of the same customer and reward.
"""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.orm import Session

_BALANCES = text(
    """
    WITH keys AS (
        SELECT customer_id, reward_id FROM wallets
         WHERE CAST(:c AS uuid) IS NULL OR customer_id = CAST(:c AS uuid)
        UNION
        SELECT customer_id, reward_id FROM transactions
         WHERE CAST(:c AS uuid) IS NULL OR customer_id = CAST(:c AS uuid)
        UNION
        SELECT customer_id, reward_id FROM lines
         WHERE (CAST(:c AS uuid) IS NULL OR customer_id = CAST(:c AS uuid))
           AND state IN ('ACTIVE', 'EXPIRED', 'REVERSED')
    )
    SELECT k.customer_id, k.reward_id,
           coalesce((SELECT balance FROM wallets w
                     WHERE w.customer_id = k.customer_id AND w.reward_id = k.reward_id), 0),
           coalesce((SELECT sum(amount) FROM transactions t
                     WHERE t.customer_id = k.customer_id AND t.reward_id = k.reward_id), 0),
           coalesce((SELECT sum(remaining) FROM lines l
                     WHERE l.customer_id = k.customer_id AND l.reward_id = k.reward_id
                       AND l.state IN ('ACTIVE', 'EXPIRED', 'REVERSED')), 0)
    FROM keys k
    """
)

_OVERFULL = text(
    "SELECT id, amount, remaining FROM lines"
    " WHERE remaining > amount"
    " AND (CAST(:c AS uuid) IS NULL OR customer_id = CAST(:c AS uuid))"
)

_DOUBLE_UNDO = text(
    """
    SELECT reverses_id, count(*) FROM transactions
    WHERE reverses_id IS NOT NULL
      AND (CAST(:c AS uuid) IS NULL OR customer_id = CAST(:c AS uuid))
    GROUP BY reverses_id HAVING count(*) > 1
    """
)

_MISMATCHED_UNDO = text(
    """
    SELECT r.id FROM transactions r JOIN transactions o ON o.id = r.reverses_id
    WHERE r.type <> 'REVERSAL' OR o.type = 'REVERSAL'
       OR r.customer_id <> o.customer_id OR r.reward_id <> o.reward_id
       OR r.line_id IS DISTINCT FROM o.line_id
    """
)


def invariant_violations(session: Session, customer_id: uuid.UUID | None = None) -> list[str]:
    """Every broken invariant, for one customer or (None) the whole ledger."""
    params = {"c": customer_id}
    problems: list[str] = []
    for customer, reward, wallet, tx_sum, line_sum in session.execute(_BALANCES, params):
        if not wallet == tx_sum == line_sum:
            problems.append(
                f"customer {customer} reward {reward}: wallet {wallet}, "
                f"transactions {tx_sum}, lines {line_sum}"
            )
    for line_id, amount, remaining in session.execute(_OVERFULL, params):
        problems.append(f"line {line_id}: remaining {remaining} exceeds amount {amount}")
    for tx_id, count in session.execute(_DOUBLE_UNDO, params):
        problems.append(f"transaction {tx_id} undone {count} times")
    if customer_id is None:
        for (tx_id,) in session.execute(_MISMATCHED_UNDO):
            problems.append(f"reversal {tx_id} does not match the transaction it undoes")
    return problems


def assert_invariants(session: Session, customer_id: uuid.UUID | None = None) -> None:
    problems = invariant_violations(session, customer_id)
    if problems:
        raise AssertionError("ledger invariants broken:\n" + "\n".join(problems))
