"""Root conftest: the `--impl` option must be registered here (an initial conftest), so that
it exists whether pytest is started with `tests/exercises`, one grader file or no path.

Graders receive the implementation under test through the `impl` fixture defined in
tests/exercises/conftest.py.
"""


def pytest_addoption(parser):
    parser.addoption(
        "--impl",
        action="store",
        default=None,
        choices=("exercises", "solutions"),
        help="which implementation the exercise graders test: exercises (the learner's "
        "stubs) or solutions (reference answers). Default: $COURSE_IMPL, else solutions.",
    )
