"""The theory registry: build a theory from its name, lattice and couplings.

Built in: ``phi4`` (couplings ``m2``, ``lam``), ``u1`` (``beta``), the family ``suN``
(``su2``, ``su3``, ...; ``beta``), and the Schwinger model with two Wilson fermions,
``schwinger`` (``beta``, ``kappa``; option ``fermions``: ``exact`` determinant or
``pseudofermion``, the latter also named ``schwinger-pseudofermion``).
A new theory is one module with a :class:`Theory` subclass plus one line::

    register_theory(MyTheory)

after which ``make_theory("mytheory", ...)``, ``gaugeflow hmc --theory mytheory`` and its
coupling options work.  A class that stands for a family of names (SU(N)) overrides the
class method :meth:`Theory.parse_name`, which returns the extra constructor arguments for
the names it accepts.  Options (:class:`Option`, e.g. ``fermions``) are passed to
:func:`make_theory` like couplings and become command-line options the same way.
"""

from __future__ import annotations

from .errors import InputError
from .geometry import parse_lattice_shape
from .phi4 import Phi4
from .schwinger import Schwinger
from .sun import SUN
from .theory import Coupling, Option, Theory
from .u1 import U1

_REGISTRY: dict[str, type[Theory]] = {}


def register_theory(cls: type[Theory]) -> type[Theory]:
    """Make ``cls`` available under ``cls.name`` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Theory)):
        raise InputError(f"{cls!r} is not a Theory subclass")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise InputError(f"a different theory is already registered as {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def theory_names() -> tuple[str, ...]:
    """Registered names (a family such as ``suN`` is listed once)."""
    return tuple(_REGISTRY)


def theory_class(name: str) -> tuple[type[Theory], dict]:
    """The class registered for ``name`` and the extra constructor arguments the name implies."""
    key = str(name).lower()
    for cls in _REGISTRY.values():
        extra = cls.parse_name(key)
        if extra is not None:
            return cls, extra
    raise InputError(f"unknown theory {name!r}; choose one of {', '.join(theory_names())}")


def _declared(attribute: str) -> dict:
    """The entries of the class attribute ``attribute`` of every registered theory, by name
    (the first theory to declare a name describes it)."""
    found = {}
    for cls in _REGISTRY.values():
        for entry in getattr(cls, attribute):
            found.setdefault(entry.name, entry)
    return found


def declared_couplings() -> dict[str, Coupling]:
    """Every coupling of every registered theory, by name (the command line's options)."""
    return _declared("couplings_declared")


def declared_options() -> dict[str, Option]:
    """Every option of every registered theory, by name (the command line's options)."""
    return _declared("options_declared")


def theories_with_coupling(name: str) -> list[str]:
    """Registered theory names that take coupling or option ``name`` (for help texts)."""
    return [theory for theory, cls in _REGISTRY.items() if name in cls.coupling_names + cls.option_names]


def make_theory(name: str, lattice_shape, **settings) -> Theory:
    """``make_theory('u1', '8x8', beta=2.0)``, ``make_theory('schwinger', '8x8', beta=2.0,
    kappa=0.26, fermions='pseudofermion')``: couplings and options by name; values given as
    ``None`` count as missing (an option then takes what the name implies, else its default)."""
    cls, implied = theory_class(name)
    shape = parse_lattice_shape(lattice_shape)
    given = {k: v for k, v in settings.items() if v is not None}
    unknown = sorted(k for k in given if k not in cls.coupling_names + cls.option_names)
    if unknown:
        raise InputError(f"theory {name!r} takes no coupling(s) or option(s) {', '.join(unknown)}")
    missing = [c for c in cls.coupling_names if c not in given]
    if missing:
        raise InputError(f"theory {name!r} needs coupling(s) {', '.join(missing)}")
    for option in cls.options_declared:
        if option.name in given and option.name in implied and option.check(given[option.name]) != implied[option.name]:
            raise InputError(f"theory {name!r} means {option.name}={implied[option.name]}; "
                             f"it cannot be combined with {option.name}={given[option.name]}")
    options = {o: given[o] for o in cls.option_names if o in given}
    return cls(shape, **{c: given[c] for c in cls.coupling_names}, **{**implied, **options})


for _builtin in (Phi4, U1, SUN, Schwinger):
    register_theory(_builtin)
