"""The engine's errors as the CLI's flag lines.

The engine knows no flags: it raises `ValueError` naming its arguments
("unknown objective 'foo'", "devices=8 but 4 device(s) are available"). A job calls it with
arguments that are flags of the same name, so it turns such an error into the `InputError`
a user of the CLI reads ("unknown --objective 'foo'", "--devices=8 but ...").
"""

import re

from hyperface_jax.io.files import InputError


def flag_error(error: Exception, names) -> InputError:
    """`error`'s message with each of the argument `names` written as a flag (`--name`)."""
    if not names:
        return InputError(str(error))
    words = "|".join(sorted(map(re.escape, names), key=len, reverse=True))
    return InputError(re.sub(rf"(?<![\w-])({words})(?![\w(])", r"--\1", str(error)))
