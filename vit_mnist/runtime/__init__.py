"""What every entry point runs on: the config folder, resolvers, the job runner, build helpers and the hardware.

Importing it registers the `${vit_mnist.*:}` resolvers the YAML configs use, before Hydra composes one.
"""

from vit_mnist.runtime.resolvers import register_resolvers

register_resolvers()
