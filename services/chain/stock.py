"""The stock book: the reservations chain-c holds, by order, for anyone who asks."""

from __future__ import annotations

import threading
from collections import OrderedDict

from services.chain.models import ReservationPublic

# Orders remembered: a 3-hour workshop at 40 orders/s places some 430,000; the newest 50,000
# (about 20 minutes of load, a few MB) cover any verify run and the debrief.
BOOK_ORDERS = 50_000


class StockBook:
    """Reservations by order id, newest orders kept; safe to use from worker threads."""

    def __init__(self, orders: int = BOOK_ORDERS) -> None:
        self._orders = orders
        self._by_order: OrderedDict[str, list[ReservationPublic]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, reservation: ReservationPublic) -> None:
        with self._lock:
            self._by_order.setdefault(reservation.order_id, []).append(reservation)
            self._by_order.move_to_end(reservation.order_id)
            while len(self._by_order) > self._orders:
                self._by_order.popitem(last=False)

    def of(self, order_id: str) -> list[ReservationPublic]:
        with self._lock:
            return list(self._by_order.get(order_id, ()))
