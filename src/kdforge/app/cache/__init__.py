"""The teacher-output cache: the teacher runs once over the training set; training reads its outputs."""
