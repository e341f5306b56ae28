"""Demo actors shipped with the worker."""

from services.worker.actors.ask import ask
from services.worker.actors.distill import distill
from services.worker.actors.hog import hog
from services.worker.actors.stubborn import stubborn

__all__ = ["ask", "distill", "hog", "stubborn"]
