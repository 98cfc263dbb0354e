"""`POST /v1/feedback`: a rating or a corrected answer for one served request, stored beside
that request's accounting record (the retraining loop reads corrections from there)."""

from gateway.feedback.protocol import Feedback, FeedbackRequest
from gateway.feedback.router import post_feedback
from gateway.feedback.store import FeedbackStore, RequestNotFoundError

__all__ = ["Feedback", "FeedbackRequest", "FeedbackStore", "RequestNotFoundError", "post_feedback"]
