"""The segmenter's two halves and the questions they make cheap
(docs/algorithm.md 10): ``features`` holds the prompt-independent state of
images (Segmenter.encode), ``decode`` turns it and a prompt set into
results (Segmenter.decode), ``describe`` ranks a vocabulary by the
object-presence prior on the same state, ``vocabulary`` encodes a long list
of names in the background, ``dense`` gives the state to mapping stacks as
dense language features with their placement and ``pooling`` pools them
per object and class (10.1).
"""
