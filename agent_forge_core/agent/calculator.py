"""A calculator a model may call with untrusted text: arithmetic only, evaluated over a whitelisted AST.

Allowed: integer and decimal literals, + - * / // % **, unary + -, parentheses. Refused with a one-line
reason (the model reads it as the call's result): names, attributes, calls, subscripts, strings, anything
else Python parses; inputs over `MAX_LEN` characters; powers whose result would have more than
`MAX_DIGITS` digits (estimated from |base| and the exponent before computing, so `9**9**9` costs nothing);
division by zero.
"""
from __future__ import annotations

import ast
import math
import operator

MAX_LEN = 200
MAX_DIGITS = 300

_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalculatorError(ValueError):
    """Not an arithmetic expression this calculator evaluates; the message says why."""


def _digits(x) -> float:
    return math.log10(abs(x)) + 1 if x else 1.0


def _eval(node):
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
        a, b = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            if abs(b) > 10_000 or _digits(a) * max(b, 0) > MAX_DIGITS:
                raise CalculatorError(f"the power is too large (over {MAX_DIGITS} digits)")
        try:
            return _BIN[type(node.op)](a, b)
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    raise CalculatorError(f"only numbers and + - * / // % ** are allowed, not {type(node).__name__}")


def format_number(x) -> str:
    if isinstance(x, float):
        if not math.isfinite(x):
            raise CalculatorError("the result is not a finite number")
        if x.is_integer() and abs(x) < 1e15:
            return str(int(x))
        return f"{x:.10g}"
    if _digits(x) > MAX_DIGITS:
        raise CalculatorError(f"the result has over {MAX_DIGITS} digits")
    return str(x)


def calculate(expression: str) -> str:
    """The value of `expression` as text; raises CalculatorError with the reason otherwise."""
    text = expression.strip()
    if len(text) > MAX_LEN:
        raise CalculatorError(f"the expression is longer than {MAX_LEN} characters")
    if not text:
        raise CalculatorError("the expression is empty")
    try:
        tree = ast.parse(text.replace("×", "*").replace("÷", "/"), mode="eval")
    except SyntaxError:
        raise CalculatorError("not an arithmetic expression") from None
    return format_number(_eval(tree))
