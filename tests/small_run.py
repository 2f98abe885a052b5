"""Flags for a tiny, fast learner run on Pendulum, shared by the end-to-end tests."""

SMALL = ["--env", "gym:Pendulum-v1", "--num-envs", "2", "--device", "cpu", "--preset", "cpu",
         "--set", "agent.critic_net.hidden=[32, 32]", "--set", "agent.net.hidden=[32, 32]",
         "--set", "agent.memory.batch_size=32", "--set", "agent.algorithm.training_start_step=200",
         "--set", "agent.critic_net.batch_renorm.warmup_steps=100",
         "--log-every", "100", "--eval-every", "300", "--eval-episodes", "2", "--no-compile"]
