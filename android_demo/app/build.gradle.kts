plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "dev.tflq.demo"
    compileSdk = 34

    defaultConfig {
        applicationId = "dev.tflq.demo"
        minSdk = 24
        targetSdk = 34
        versionCode = 1
        versionName = "0.1.0"
        testInstrumentationRunner = "androidx.test.runner.AndroidJUnitRunner"
    }

    androidResources {
        noCompress += "tflite"  // the model is memory-mapped from the APK
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions {
        jvmTarget = "17"
    }
}

dependencies {
    implementation("com.google.ai.edge.litert:litert:1.4.0")
    androidTestImplementation("androidx.test:runner:1.6.2")
    androidTestImplementation("androidx.test.ext:junit:1.2.1")
    androidTestImplementation("junit:junit:4.13.2")
}

// Build step: convert the model with tflq, gate it, and copy it with its labels and sample
// images into the assets. Exit code 2 (bad input) or 3 (quality gate) fails the build.
val tflqRoot = rootDir.parentFile
val tflqPython = providers.gradleProperty("tflq.python").getOrElse("python3")
val tflqConvert by tasks.registering(Exec::class) {
    group = "tflq"
    description = "Converts and validates the model (python -m pipelines.convert)."
    workingDir = tflqRoot
    commandLine(tflqPython, "-m", "pipelines.convert", "--modes", "float32,int8",
        "--out", "build/tflq_out", "--max_accuracy_drop", "1.0", "--quiet")
}
val tflqAssets by tasks.registering(Exec::class) {
    group = "tflq"
    description = "Copies the int8 model, labels and samples into src/main/assets."
    dependsOn(tflqConvert)
    workingDir = tflqRoot
    commandLine(tflqPython, "-m", "pipelines.demo_assets", "--report", "build/tflq_out/report.json",
        "--mode", "int8", "--assets", file("src/main/assets").absolutePath)
}
tasks.named("preBuild") { dependsOn(tflqAssets) }
