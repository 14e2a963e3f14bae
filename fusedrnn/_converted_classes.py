"""The classes that :func:`fusedrnn.convert` gives to converted subclasses of torch.nn's RNNs.

A user's ``class MyLSTM(nn.LSTM)`` (its own ``forward``, methods, attributes)
becomes an instance of ``FusedMyLSTM(MyLSTM, fusedrnn.LSTM)``.  fusedrnn.LSTM
subclasses nn.LSTM, so the MRO is ``[FusedMyLSTM, MyLSTM, <MyLSTM's own
bases>, fusedrnn.LSTM, FusedRNNBase, nn.LSTM, nn.RNNBase, nn.Module]``:
MyLSTM's methods come first, and the ``super().forward(...)`` inside them,
written for nn.LSTM.forward, reaches fusedrnn's forward.

One class per (user class, fusedrnn class), cached, so that the converted
instances of one user class share their class.  A generated class cannot be
found by name when unpickling (a fresh process has not generated it yet), so
its instances pickle as "regenerate the class from its two bases, then set
the state" (``__reduce_ex__``): pickle, ``torch.save``/``torch.load`` and
``copy.deepcopy`` work wherever the user's class is importable, which
pickling the unconverted model needs too.
"""

from __future__ import annotations

import types
from typing import Dict, Tuple

__all__ = ["converted_class", "new_instance"]

# Strong references: a user class that has been converted stays alive with its generated class
# (a handful of classes per program).
_CACHE: Dict[Tuple[type, type], type] = {}


def converted_class(user_cls: type, fused_cls: type) -> type:
    """The class of a converted ``user_cls`` instance: ``fused_cls`` itself when ``user_cls`` is
    fused_cls's torch.nn twin, else the cached ``Fused<user_cls>(user_cls, fused_cls)``."""
    if user_cls in fused_cls.__mro__:
        return fused_cls
    key = (user_cls, fused_cls)
    if key not in _CACHE:
        _CACHE[key] = _generate(user_cls, fused_cls)
    return _CACHE[key]


def new_instance(user_cls: type, fused_cls: type):
    """An empty instance of ``converted_class(user_cls, fused_cls)``, whose state is set afterwards
    (by fusedrnn.convert, or by pickle's ``__setstate__``); ``__init__`` is not run."""
    cls = converted_class(user_cls, fused_cls)
    return cls.__new__(cls)


def _generate(user_cls: type, fused_cls: type) -> type:
    name = f"Fused{user_cls.__name__}"

    def __reduce_ex__(self, protocol):
        if type(self) is not cls:  # a class derived from this one is importable: pickled as usual
            return super(cls, self).__reduce_ex__(protocol)
        return new_instance, (user_cls, fused_cls), self.__getstate__()

    namespace = {
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": (f"{user_cls.__module__}.{user_cls.__qualname__} running fusedrnn.{fused_cls.__name__}'s "
                    "forward (made by fusedrnn.convert)."),
        "__reduce_ex__": __reduce_ex__,
    }
    # types.new_class picks the most derived metaclass (a user class may be abstract: ABCMeta)
    cls = types.new_class(name, (user_cls, fused_cls), exec_body=lambda ns: ns.update(namespace))
    return cls
